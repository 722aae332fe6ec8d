// CLIP parity on the wasm backend (the shared suite of clip-parity.ts).
import { clipParitySuite } from './clip-parity.ts';

clipParitySuite('wasm');
