// GPT prior parity on WebGPU (the software adapter on machines without a GPU). GPU summation orders and fused
// multiply-adds differ, so tolerances are the 10x MANIFEST.md suggests for GPUs (the software path meets 1x).
import { gptParitySuite } from './gpt-parity.ts';

gptParitySuite('webgpu', { tolScale: 10 });
