import { generateParitySuite } from './generate-parity.ts';

generateParitySuite('wasm');
