// GPT prior parity on the wasm backend (the shared suite of gpt-parity.ts).
import { gptParitySuite } from './gpt-parity.ts';

gptParitySuite('wasm');
