// Generate-pipeline pieces on WebGPU (hardware adapter when present, else Dawn's software path on Mesa llvmpipe;
// skipped with the reason when no adapter can be created).
import { pipelineParitySuite } from './cutouts-parity.ts';

pipelineParitySuite('webgpu');
