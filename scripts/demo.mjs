// `pnpm demo [--keep]`: builds the demo and the five packages it uses (tsc -b packages/demo — not
// the whole monorepo), says so and how long it took, then runs it with the same arguments.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  console.error(
    `Busbar needs Node >= 22.12; this is ${process.version}. Without changing your system Node:\n` +
      `  npx -y -p node@24 -p pnpm@10.34.9 -c 'pnpm install && pnpm demo'\n` +
      `or put Node 24 first on PATH for this shell: source scripts/node.sh`,
  );
  process.exit(1);
}

const started = Date.now();
process.stderr.write('building the demo and @busbar/core, memory, rabbitmq, kafka, redis-streams (tsc -b packages/demo)… ');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const build = spawnSync(process.execPath, [tsc, '-b', join(root, 'packages', 'demo')], { stdio: ['ignore', 'inherit', 'inherit'] });
if (build.status !== 0) {
  process.stderr.write('\nbuild failed\n');
  process.exit(build.status ?? 1);
}
process.stderr.write(`done in ${((Date.now() - started) / 1000).toFixed(1)} s\n\n`);

const run = spawnSync(process.execPath, [join(root, 'packages', 'demo', 'dist', 'main.js'), ...process.argv.slice(2)], {
  stdio: 'inherit',
});
process.exit(run.status ?? 1);
