// Stand-in for actions/github-script@v7: the same globals (github, context, core, require,
// process) with the REST methods the workflows call, sent to the stand-in API at
// $GITHUB_API_URL. Requests and responses are plain fetch(), so a 404 or 403 from the API
// rejects the script's promise the way Octokit's RequestError does.
"use strict";
const fs = require("fs");
const os = require("os");

function input(name) {
  return (process.env[`INPUT_${name.replace(/ /g, "_").toUpperCase()}`] || "").trim();
}

function command(file, name, value) {
  fs.appendFileSync(process.env[file], `${name}=${value}${os.EOL}`);
}

// act shows annotations without properties only in its debug log, so each is also printed as
// a plain line (the Actions log shows both, too: the annotation and the step's output).
function annotate(level, m) {
  console.log(`${level}: ${m}`);
  console.log(`::${level}::${m}`);
}

const core = {
  info: (m) => console.log(m),
  notice: (m) => annotate("notice", m),
  warning: (m) => annotate("warning", m),
  error: (m) => annotate("error", m),
  setOutput: (name, value) => command("GITHUB_OUTPUT", name, typeof value === "string" ? value : JSON.stringify(value)),
  setFailed: (m) => {
    process.exitCode = 1;
    annotate("error", m);
  },
  getInput: (name) => input(name),
};

class RequestError extends Error {
  constructor(status, message, response) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.response = response;
  }
}

const token = input("github-token");
const api = process.env.GITHUB_API_URL.replace(/\/$/, "");

async function request(method, route, params) {
  const rest = { ...params };
  const path = route.replace(/\{(\w+)\}/g, (_, key) => {
    const value = rest[key];
    delete rest[key];
    return encodeURIComponent(String(value));
  });
  let url = `${api}${path}`;
  let body;
  if (method === "GET") {
    const query = new URLSearchParams(Object.entries(rest).map(([k, v]) => [k, String(v)]));
    if ([...query].length) url += `?${query}`;
  } else {
    body = JSON.stringify(rest);
  }
  const res = await fetch(url, {
    method,
    body,
    headers: {
      accept: "application/vnd.github+json",
      authorization: token ? `token ${token}` : "",
      "content-type": "application/json",
    },
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (res.status >= 400) {
    throw new RequestError(res.status, (data && data.message) || res.statusText, { status: res.status, data });
  }
  return { status: res.status, url, headers: Object.fromEntries(res.headers), data };
}

function endpoint(method, route) {
  const fn = (params = {}) => request(method, route, params);
  fn.endpoint = { method, route };
  return fn;
}

const github = {
  request: (route, params = {}) => {
    const [method, path] = route.includes(" ") ? route.split(" ", 2) : ["GET", route];
    return request(method, path, params);
  },
  rest: {
    pulls: { get: endpoint("GET", "/repos/{owner}/{repo}/pulls/{pull_number}") },
    issues: {
      listComments: endpoint("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
      createComment: endpoint("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
      updateComment: endpoint("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    },
    repos: {
      getCollaboratorPermissionLevel: endpoint("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
    },
  },
  // Octokit's paginate: follow pages until one comes back short.
  paginate: async (fn, params = {}) => {
    const perPage = params.per_page || 30;
    const all = [];
    for (let page = 1; ; page++) {
      const { data } = await fn({ ...params, per_page: perPage, page });
      all.push(...data);
      if (data.length < perPage) return all;
    }
  },
};

const payload = process.env.GITHUB_EVENT_PATH && fs.existsSync(process.env.GITHUB_EVENT_PATH)
  ? JSON.parse(fs.readFileSync(process.env.GITHUB_EVENT_PATH, "utf8"))
  : {};
const [owner, repo] = (process.env.GITHUB_REPOSITORY || "/").split("/");
const context = {
  payload,
  eventName: process.env.GITHUB_EVENT_NAME,
  sha: process.env.GITHUB_SHA,
  ref: process.env.GITHUB_REF,
  workflow: process.env.GITHUB_WORKFLOW,
  action: process.env.GITHUB_ACTION,
  actor: process.env.GITHUB_ACTOR,
  job: process.env.GITHUB_JOB,
  runNumber: Number(process.env.GITHUB_RUN_NUMBER),
  runId: Number(process.env.GITHUB_RUN_ID),
  apiUrl: api,
  serverUrl: process.env.GITHUB_SERVER_URL,
  repo: { owner, repo },
  get issue() {
    return { owner, repo, number: (payload.issue || payload.pull_request || payload).number };
  },
};

const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
const script = new AsyncFunction("require", "github", "context", "core", "process", input("script"));
script(require, github, context, core, process).then(
  (result) => {
    if (result !== undefined) {
      core.setOutput("result", input("result-encoding") === "string" ? String(result) : JSON.stringify(result));
    }
  },
  (err) => {
    core.setFailed(`Unhandled error: ${err}`);
  },
);
