// The tfjs cpu backend is ~15x slower than wasm here: one step covers the losses, gradient, cutouts, embeddings, Adam and the clamp; the wasm suite runs all five.
import { generateParitySuite } from './generate-parity.ts';

generateParitySuite('cpu', { steps: 1 });
