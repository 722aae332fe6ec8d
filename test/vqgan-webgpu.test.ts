// VQGAN fixture parity on WebGPU (a hardware adapter when present, else Dawn's software path on Mesa llvmpipe; the
// tests skip with the reason when no adapter can be created). GPU summation orders differ from PyTorch's CPU ones:
// MANIFEST.md warns of up to ~10x the CPU differences; software WebGPU (llvmpipe) measured within the CPU tolerances.
import { vqganParitySuite } from './vqgan-parity.ts';

vqganParitySuite('webgpu');
