// The tfjs cpu backend is ~15x slower than wasm here: two steps cover losses, gradients, Adam and the clamp.
import { generateParitySuite } from './generate-parity.ts';

generateParitySuite('cpu', { steps: 2 });
