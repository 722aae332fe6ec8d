// CLIP parity on WebGPU (a hardware adapter when present, else Dawn's software path on Mesa llvmpipe; skipped with the
// reason when no adapter can be created). Forward parity and the image gradient only: the software path is slow.
// GPU summation orders differ from PyTorch's CPU ones (MANIFEST.md: up to ~10x the CPU differences).
import { clipParitySuite } from './clip-parity.ts';

clipParitySuite('webgpu', { tolScale: 10, quick: true });
