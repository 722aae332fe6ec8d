// WebGPU (hardware adapter, or Dawn's software path on llvmpipe; skipped with the reason when neither exists).
import { generateParitySuite } from './generate-parity.ts';

generateParitySuite('webgpu', { steps: 1 });
