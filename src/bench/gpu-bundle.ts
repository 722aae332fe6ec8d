// Prepares the compiled engine's H200 check (issue 7's targets; ../shared/gpu/README.md says how such a check runs):
// bundles the two benchmarks that measure them into `.gpu/bench/compiled.mjs` and `.gpu/bench/gpt.mjs` (esbuild;
// under `bench/`, the name runStandalone recognises as the program being run; `webgpu` stays
// external and resolves to the carried `.gpu/node_modules/webgpu`) and writes `.gpu/check-compiled.sh`, which runs
// them on the GPU machine in order of importance, each under a timeout, and writes each one's output to $OUT:
//   - the generate iteration at 256x256 / 32 cutouts, 'latest' and 'original' (goal <= 75 ms; PyTorch 75.7 ms), and
//     with f16 weights, and with the checkpointed blocks recomputed; at 512x512 (goal <= 190 ms; PyTorch 193 ms); each
//     prints its plan's memory (goal: half of PyTorch's peak, 3.2 / 7.4 GiB);
//   - the GPT prior's step at the cin shape, batch 1 (goal >= 150 tokens/s; PyTorch 44), f32 and f16.
//
//   bash ../shared/gpu/prepare-carry.sh      # once: node, dawn.node and the Vulkan/GL loaders into .gpu/
//   node --import tsx src/bench/gpu-bundle.ts [--smoke]
//   then, where a device is lent: the `run` tool with carry [".gpu"] and `OUT=$OUT bash .gpu/check-compiled.sh`
//
// --smoke runs both bundles here, on the software adapter at small sizes, so that a bundling problem shows up before
// device time is spent.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { build } from 'esbuild';

const ROOT = path.resolve(import.meta.dirname, '../..');
const GPU = path.join(ROOT, '.gpu');

/** Each line: output file name, timeout in seconds, bundle, arguments. The most important first (device time is short). */
const CHECKS: Array<[name: string, seconds: number, bundle: string, args: string]> = [
  ['compiled-256-latest', 90, 'compiled', '--cut-method latest --steps 30'],
  ['gpt-compiled-b1', 90, 'gpt', '--engine compiled --tokens 48'],
  ['compiled-512-latest', 110, 'compiled', '--size 512 --cut-method latest --steps 20'],
  ['compiled-256-original', 70, 'compiled', '--cut-method original --steps 30'],
  ['compiled-256-latest-f16', 70, 'compiled', '--cut-method latest --steps 30 --precision f16'],
  ['gpt-compiled-b1-f16', 60, 'gpt', '--engine compiled --tokens 48 --precision f16'],
  ['compiled-256-latest-recompute', 50, 'compiled', '--cut-method latest --steps 30 --recompute'],
];
/** One `run` call may take 600 s; the checks must fit with the machine's setup. */
const BUDGET_S = 560;

function checkScript(): string {
  const lines = CHECKS.map(([name, seconds, bundle, args]) => `run ${name} ${seconds} .gpu/bench/${bundle}.mjs --backend webgpu ${args}`);
  return `# The compiled engine on the GPU machine: made by src/bench/gpu-bundle.ts (see there). Results: $OUT/*.txt.
set -u
cd "$(dirname "$0")/.."
source .gpu/setup.sh > "$OUT/setup.txt" 2>&1
run() {
  local name=$1 seconds=$2
  shift 2
  { date; timeout "$seconds" "$NODE" "$@"; echo "exit $?"; date; } 2>&1 | grep -v maxDynamic > "$OUT/$name.txt"
}
${lines.join('\n')}
`;
}

async function main(): Promise<void> {
  const seconds = CHECKS.reduce((a, c) => a + c[1], 0);
  if (seconds > BUDGET_S) throw new Error(`the checks' timeouts add up to ${seconds} s, over the ${BUDGET_S} s one device call allows`);
  if (!fs.existsSync(path.join(GPU, 'setup.sh')) || !fs.existsSync(path.join(GPU, 'node_modules/webgpu'))) {
    throw new Error('.gpu/ is not prepared: run `bash ../shared/gpu/prepare-carry.sh` from the project root first');
  }
  // tfjs-backend-wasm is bundled, but locates its .wasm files next to its package.json: a stub package.json there
  // lets require.resolve succeed (the webgpu backend never loads them).
  const wasmStub = path.join(GPU, 'node_modules/@tensorflow/tfjs-backend-wasm/package.json');
  fs.mkdirSync(path.dirname(wasmStub), { recursive: true });
  if (!fs.existsSync(wasmStub)) fs.writeFileSync(wasmStub, JSON.stringify({ name: '@tensorflow/tfjs-backend-wasm', version: '4.22.0', main: 'index.js' }));
  for (const name of ['compiled', 'gpt']) {
    await build({
      entryPoints: [path.join(ROOT, `src/bench/${name}.ts`)],
      outfile: path.join(GPU, `bench/${name}.mjs`),
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      external: ['webgpu'],
      banner: { js: "import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);" },
      logLevel: 'warning',
    });
  }
  fs.writeFileSync(path.join(GPU, 'check-compiled.sh'), checkScript());
  process.stdout.write(`wrote .gpu/bench/compiled.mjs, .gpu/bench/gpt.mjs and .gpu/check-compiled.sh (${CHECKS.length} checks, at most ${seconds} s)\n`);
  // The run tool carries at most 64 MiB: say so before device time is spent on a carry that cannot travel.
  const bytes = (p: string): number => (fs.statSync(p).isDirectory() ? fs.readdirSync(p).reduce((a, f) => a + bytes(path.join(p, f)), 0) : fs.statSync(p).size);
  const carried = bytes(GPU);
  process.stdout.write(`.gpu/ holds ${(carried / 2 ** 20).toFixed(1)} MiB${carried > 64 * 2 ** 20 ? ' - over the 64 MiB a carry may take: remove what this check does not need' : ''}\n`);

  if (process.argv.includes('--smoke')) {
    // dawn.node travels compressed (setup.sh unpacks it there): unpacked here for the smoke run only, then removed,
    // so that the carry stays small.
    const dawn = path.join(GPU, 'node_modules/webgpu/dist/linux-x64/dawn.node');
    const unpacked = !fs.existsSync(dawn);
    if (unpacked) fs.writeFileSync(dawn, execFileSync('xz', ['-dc', path.join(GPU, 'dawn.node.xz')], { maxBuffer: 1 << 30 }));
    process.on('exit', () => unpacked && fs.rmSync(dawn, { force: true }));
    const env = { ...process.env, EGL_PLATFORM: 'surfaceless' };
    const smoke = (bundle: string, args: string[]) => {
      const out = execFileSync(process.execPath, [path.join(GPU, `bench/${bundle}.mjs`), ...args], { cwd: ROOT, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      process.stdout.write(out.split('\n').filter((l) => !l.includes('maxDynamic') && !/step \d+:/.test(l)).join('\n'));
    };
    smoke('compiled', ['--backend', 'webgpu', '--size', '64', '--cutn', '4', '--steps', '4', '--cut-method', 'latest', '--precision', 'f16', '--recompute']);
    smoke('gpt', ['--backend', 'webgpu', '--engine', 'compiled', '--tokens', '4']);
  }
}

await main();
