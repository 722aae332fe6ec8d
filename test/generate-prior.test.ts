// `vqclip generate --init prior`: CLIP-guided optimisation starting from a sample of a taming transformer's GPT
// prior (tiny fixtures). With 0 iterations the result is exactly the prior's sample, as `vqclip sample` draws it
// with the same seed; with iterations it runs and records the prior in the PNG.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import sharp from 'sharp';
import { runGenerateCommand } from '../src/cli/commands/generate.ts';
import { runSample } from '../src/cli/commands/sample.ts';
import { UserError } from '../src/cli/errors.ts';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { readRunRecord } from '../src/pipelines/generate-run.ts';
import { FIXTURES, missingFixtures } from './helpers.ts';

const need = ['tiny_transformer_cin.ckpt', 'tiny_transformer_cin.yaml', 'tiny_clip_state.pt', 'bpe_simple_vocab_16e6.txt.gz'];
let dir: string;
let backend: string;
const missing = missingFixtures(need);

describe('generate --init prior', () => {
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-prior-'));
    backend = (await initBackend('wasm')).backend;
  });
  after(async () => {
    await shutdownBackend();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const base = () => ({
    prior: path.join(FIXTURES, 'tiny_transformer_cin.ckpt'),
    clip: [path.join(FIXTURES, 'tiny_clip_state.pt')],
    prompt: 'a red apple',
    size: [32],
    cutn: 2,
    seed: '11',
    class: 3,
    topK: 10,
    backend: 'wasm',
  });

  test('0 iterations give exactly the sample `vqclip sample` draws with the same seed', async (t) => {
    if (missing) return t.skip(missing);
    const g = await runGenerateCommand({ ...base(), iterations: 0, output: path.join(dir, 'g.png') }, { backend });
    const s = await runSample({ ckpt: path.join(FIXTURES, 'tiny_transformer_cin.ckpt'), class: 3, n: 1, topK: 10, seed: 11, output: path.join(dir, 'samples') });
    const [a, b] = await Promise.all([sharp(g.output).raw().toBuffer(), sharp(s.outputs[0]).raw().toBuffer()]);
    assert.deepEqual(a, b);
    const rec = readRunRecord(g.output);
    assert.equal(rec.settings.init, 'prior');
    assert.deepEqual(rec.settings.prior, { classLabel: 3, topK: 10, topP: 1, temperature: 1 });
    assert.ok(rec.models.some((m) => m.role === 'prior' && m.name === 'tiny_transformer_cin.ckpt' && /^[0-9a-f]{64}$/.test(m.sha256!)));
  });

  test('optimises from the prior sample; --from replays it; bad class and missing prior are clear errors', async (t) => {
    if (missing) return t.skip(missing);
    const g = await runGenerateCommand({ ...base(), iterations: 2, saveEvery: 0, output: path.join(dir, 'opt.png') }, { backend });
    assert.equal(g.iteration, 2);
    const again = await runGenerateCommand({ from: g.output, output: path.join(dir, 'opt-again.png'), backend: 'wasm' }, { backend });
    assert.deepEqual(await sharp(again.output).raw().toBuffer(), await sharp(g.output).raw().toBuffer());
    await assert.rejects(runGenerateCommand({ ...base(), class: 10, iterations: 1, output: path.join(dir, 'bad.png') }, { backend }), (e: unknown) => e instanceof UserError && /class 10/.test((e as Error).message));
    await assert.rejects(runGenerateCommand({ ...base(), prior: undefined, init: 'prior', builtin: true, iterations: 1, output: path.join(dir, 'bad2.png') }, { backend }), (e: unknown) => e instanceof UserError && /--prior/.test((e as Error).message));
  });
});
