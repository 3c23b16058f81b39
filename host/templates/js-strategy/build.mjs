// Build src/strategy.js into a WebAssembly component that setpoint loads as a rollout
// strategy.
//
//   npm run build                  (writes dist/{{name}}.wasm)
//   npm run build -- OUTPUT        (writes OUTPUT)
//
// componentize-js embeds a JavaScript engine (SpiderMonkey, as StarlingMonkey) in the
// component and pre-initialises it with the module (Wizer): the build takes about a
// minute and the output is about 12 MB whatever the size of the source.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const output = resolve(process.argv[2] ?? resolve(here, 'dist/{{name}}.wasm'));

const { component } = await componentize({
  sourcePath: resolve(here, 'src/strategy.js'),
  // wit/world.wit: the world this plugin implements, over the setpoint contract in
  // wit/deps/setpoint/setpoint.wit (setpoint:plugin@0.2.0, copied there by
  // `setpoint plugins new`; do not edit it).
  witPath: resolve(here, 'wit'),
  worldName: 'plugin',
  // A strategy talks to the control plane only through the imports in wit/world.wit:
  // no stdout/stderr, random, clocks or HTTP (it measures time with the rollout's
  // elapsedMs). Each
  // feature left on would import WASI interfaces that the host links only to deny them.
  // Without `stdio`, console.log goes nowhere: log with `log` from
  // 'setpoint:plugin/logging@0.2.0'.
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});

await mkdir(dirname(output), { recursive: true });
// Write then rename, so a reader (the daemon's plugin directory) never sees half a file.
await writeFile(`${output}.tmp`, component);
await rename(`${output}.tmp`, output);
console.log(`{{name}}: ${component.length} bytes -> ${output}`);
