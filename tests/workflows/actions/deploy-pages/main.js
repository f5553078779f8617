// Stand-in action: hands over to standin.py (see there), like the real action's dist/index.js.
const { spawnSync } = require("child_process");
const path = require("path");
const r = spawnSync(process.env.STANDIN_PYTHON, [path.join(process.env.STANDIN_HOME, "standin.py"), "deploy-pages"], {
  stdio: "inherit",
});
process.exit(r.status === null ? 1 : r.status);
