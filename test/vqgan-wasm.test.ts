// VQGAN fixture parity on the wasm backend (threads + fast backward kernels, as initBackend('wasm') sets them up).
import { vqganParitySuite } from './vqgan-parity.ts';

vqganParitySuite('wasm');
