// Generate-pipeline pieces (cutouts, Adam trajectory, nearest codes, cutter gradients) on the wasm backend.
import { pipelineParitySuite } from './cutouts-parity.ts';

pipelineParitySuite('wasm');
