// Builds a JavaScript service into a component:
//   node build.mjs <wit dir> <sdk file> <service file> <out.wasm>
// The SDK module and the service source become one ES module, which
// componentize-js turns into a component of the `batch-service` world.
import { readFile, writeFile } from 'node:fs/promises';
import { componentize } from '@bytecodealliance/componentize-js';

const [witPath, sdk, source, out] = process.argv.slice(2);
const module = `${await readFile(sdk, 'utf8')}\n${await readFile(source, 'utf8')}`;
const { component } = await componentize(module, {
  witPath,
  worldName: 'batch-service',
  disableFeatures: ['http', 'fetch-event', 'clocks', 'random', 'stdio'],
});
await writeFile(out, component);
