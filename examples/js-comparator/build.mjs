// Build src/comparator.js into a WebAssembly component of the `comparator` world.
//
//   node build.mjs [OUTPUT]        (default: dist/js-comparator.wasm; `npm run build`)
//
// componentize-js embeds the SpiderMonkey engine (StarlingMonkey) in the component and
// pre-initialises it with this module (Wizer), so the output is about 10 MB whatever the
// size of the source.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const output = resolve(process.argv[2] ?? resolve(here, 'dist/js-comparator.wasm'));

const { component } = await componentize({
  sourcePath: resolve(here, 'src/comparator.js'),
  // The project's contract: setpoint:plugin@0.2.0. (The file, not the directory:
  // wit/v0.1.0 beside it is the archived previous version.)
  witPath: resolve(here, '../../wit/setpoint.wit'),
  worldName: 'comparator',
  // A comparator is a pure function: no stdout/stderr, random, clocks or HTTP. Each
  // feature left on would import WASI interfaces the host only links to deny them.
  // Without `stdio` an uncaught exception traps without printing; compare() turns every
  // error it expects into a plugin-error instead.
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});

await mkdir(dirname(output), { recursive: true });
// Write then rename, so a reader (the daemon's plugin directory) never sees half a file.
await writeFile(`${output}.tmp`, component);
await rename(`${output}.tmp`, output);
console.log(`js-comparator: ${component.length} bytes -> ${output}`);
