// Taming YAML configs: the fixtures (VQModel, unconditional and class-conditional Net2NetTransformer), released-style
// first stages, and malformed configs, which must fail with a FormatError naming the file and the field.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import YAML from 'yaml';
import { FormatError } from '../src/formats/host-tensor.ts';
import { parseTamingConfig, readTamingConfig, type FirstStageConfig, type TransformerConfig } from '../src/formats/taming-config.ts';
import { fixture } from './helpers.ts';

const TINY_DD = { doubleZ: false, zChannels: 8, resolution: 32, inChannels: 3, outCh: 3, ch: 32, chMult: [1, 2, 2], numResBlocks: 1, attnResolutions: [8], dropout: 0 };

test('fixture configs: tiny VQGAN, unconditional and class-conditional transformers', (t) => {
  const v = fixture(t, 'tiny_vqgan.yaml');
  const u = fixture(t, 'tiny_transformer_uncond.yaml');
  const c = fixture(t, 'tiny_transformer_cin.yaml');
  if (!v || !u || !c) return;
  const vq = readTamingConfig(v);
  assert.equal(vq.kind, 'first-stage');
  const fs1 = vq.model as FirstStageConfig;
  assert.deepEqual({ ...fs1, ddconfig: { ...fs1.ddconfig } }, {
    target: 'taming.models.vqgan.VQModel',
    kind: 'vq',
    embedDim: 8,
    nEmbed: 64,
    ddconfig: TINY_DD,
    klWeight: undefined,
    temperatureInit: undefined,
    remap: null,
    saneIndexShape: false,
  });
  const un = readTamingConfig(u);
  assert.equal(un.kind, 'transformer');
  const tu = un.model as TransformerConfig;
  assert.deepEqual(tu.gpt, { vocabSize: 64, blockSize: 80, nLayer: 2, nHead: 2, nEmbd: 32 });
  assert.deepEqual(tu.cond, { kind: 'unconditional', sosToken: 0 });
  assert.deepEqual(tu.firstStage.ddconfig, TINY_DD);
  assert.equal(tu.permuter, 'taming.modules.transformer.permuter.Identity');
  const ci = readTamingConfig(c).model as TransformerConfig;
  assert.deepEqual(ci.cond, { kind: 'class', nClasses: 10 });
  assert.equal(ci.condStageKey, 'class_label');
  assert.equal(ci.firstStageKey, 'image');
});

// Shapes of the released first stages as their model cards describe them (f16: ch_mult [1,1,2,2,4]; f8: [1,1,2,4]).
const released = (target: string, nEmbed: number, chMult: number[], extra: Record<string, unknown> = {}) => `
model:
  base_learning_rate: 4.5e-06
  target: ${target}
  params:
    embed_dim: 256
    n_embed: ${nEmbed}
${Object.entries(extra).map(([k, v]) => `    ${k}: ${v}`).join('\n')}
    ddconfig:
      double_z: False
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [${chMult.join(', ')}]
      num_res_blocks: 2
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: False
        disc_in_channels: 3
        disc_start: 250001
        disc_weight: 0.8
        codebook_weight: 1.0
`;

test('released-style first stages: VQModel f16 16384 and GumbelVQ f8 8192', () => {
  const vq = parseTamingConfig(released('taming.models.vqgan.VQModel', 16384, [1, 1, 2, 2, 4]), 'model.yaml').model as FirstStageConfig;
  assert.equal(vq.kind, 'vq');
  assert.equal(vq.nEmbed, 16384);
  assert.deepEqual(vq.ddconfig.chMult, [1, 1, 2, 2, 4]);
  const g = parseTamingConfig(released('taming.models.vqgan.GumbelVQ', 8192, [1, 1, 2, 4], { kl_weight: 1.0e-08, temperature_init: 1.0 }), 'gumbel.yaml').model as FirstStageConfig;
  assert.equal(g.kind, 'gumbel');
  assert.equal(g.klWeight, 1e-8);
  assert.equal(g.temperatureInit, 1);
});

/** Edits a parsed fixture config and expects a FormatError naming the file and matching `field`. */
function expectError(base: string, edit: (doc: Record<string, any>) => void, pattern: RegExp): void {
  const doc = YAML.parse(base);
  edit(doc);
  const text = YAML.stringify(doc);
  assert.throws(
    () => parseTamingConfig(text, 'bad.yaml'),
    (e: unknown) => {
      assert.ok(e instanceof FormatError, `not a FormatError: ${String(e)}`);
      assert.equal(e.file, 'bad.yaml');
      assert.match(e.problem, pattern);
      assert.ok(e.hint, 'no hint');
      return true;
    },
  );
}

test('malformed configs fail with the file name and the offending field', (t) => {
  const v = fixture(t, 'tiny_vqgan.yaml');
  const c = fixture(t, 'tiny_transformer_cin.yaml');
  if (!v || !c) return;
  const vq = fs.readFileSync(v, 'utf8');
  const tr = fs.readFileSync(c, 'utf8');
  expectError(vq, (d) => delete d.model, /config field model is missing or not a mapping/);
  expectError(vq, (d) => delete d.model.target, /model\.target must be a string/);
  expectError(vq, (d) => delete d.model.params, /model\.params is missing/);
  expectError(vq, (d) => delete d.model.params.ddconfig, /model\.params\.ddconfig is missing/);
  expectError(vq, (d) => (d.model.params.ddconfig.z_channels = 'eight'), /model\.params\.ddconfig\.z_channels must be a non-negative integer \(got "eight"\)/);
  expectError(vq, (d) => (d.model.params.ddconfig.ch = -32), /model\.params\.ddconfig\.ch must be a non-negative integer/);
  expectError(vq, (d) => (d.model.params.ddconfig.ch_mult = []), /model\.params\.ddconfig\.ch_mult must not be empty/);
  expectError(vq, (d) => (d.model.params.ddconfig.ch_mult = '1,2,2'), /model\.params\.ddconfig\.ch_mult must be a list of integers/);
  expectError(vq, (d) => (d.model.params.ddconfig.attn_resolutions = [8.5]), /attn_resolutions must be a list of integers/);
  expectError(vq, (d) => (d.model.params.ddconfig.dropout = 'none'), /ddconfig\.dropout must be a number/);
  expectError(vq, (d) => delete d.model.params.n_embed, /model\.params\.n_embed must be a non-negative integer \(got undefined\)/);
  expectError(vq, (d) => (d.model.params.embed_dim = 8.5), /model\.params\.embed_dim must be a non-negative integer/);
  expectError(vq, (d) => (d.model.target = 'taming.models.dummy.Autoencoder'), /model\.target names an unsupported first stage/);
  expectError(tr, (d) => delete d.model.params.transformer_config, /model\.params\.transformer_config is missing/);
  expectError(tr, (d) => (d.model.params.transformer_config.params.vocab_size = null), /transformer_config\.params\.vocab_size must be a non-negative integer/);
  expectError(tr, (d) => (d.model.params.transformer_config.params.n_head = 3), /n_embd \(32\) must be divisible by n_head \(3\)/);
  expectError(tr, (d) => (d.model.params.transformer_config.params.n_head = 0), /must be divisible by n_head \(0\)/);
  expectError(tr, (d) => delete d.model.params.first_stage_config, /model\.params\.first_stage_config is missing/);
  expectError(tr, (d) => delete d.model.params.first_stage_config.params.ddconfig.resolution, /first_stage_config\.params\.ddconfig\.resolution must be/);
  expectError(tr, (d) => delete d.model.params.cond_stage_config.params, /model\.params\.cond_stage_config\.params is missing/);
  expectError(tr, (d) => (d.model.params.cond_stage_config.params.n_classes = 'ten'), /cond_stage_config\.params\.n_classes must be a non-negative integer/);
  expectError(tr, (d) => (d.model.params.cond_stage_config = 42), /model\.params\.cond_stage_config is missing or not a mapping/);
});

test('unparseable and missing config files are reported with their path', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-config-'));
  try {
    const bad = path.join(dir, 'bad.yaml');
    for (const text of ['model: [unclosed', 'model:\n  a: 1\n  a: 2\n', 'a: &a [*a, *a]', '\t- tab', '']) {
      fs.writeFileSync(bad, text);
      assert.throws(
        () => readTamingConfig(bad),
        (e: unknown) => e instanceof FormatError && e.file === bad && /not valid YAML|root is missing|field model/.test(e.problem),
        JSON.stringify(text),
      );
    }
    // Alias expansion bombs are refused by the YAML parser's alias limit, not expanded.
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]'];
    for (let i = 1; i < 12; i++) bomb.push(`${'b'.repeat(i)}: &${'b'.repeat(i)} [${Array(10).fill(i === 1 ? '*a' : `*${'b'.repeat(i - 1)}`).join(',')}]`);
    bomb.push(`model: *${'b'.repeat(11)}`);
    fs.writeFileSync(bad, bomb.join('\n'));
    const t0 = performance.now();
    assert.throws(() => readTamingConfig(bad), FormatError);
    assert.ok(performance.now() - t0 < 2000);
    const missing = path.join(dir, 'missing.yaml');
    assert.throws(() => readTamingConfig(missing), (e: unknown) => e instanceof FormatError && e.file === missing && /config not found/.test(e.problem));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
