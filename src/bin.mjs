#!/usr/bin/env node
// The `vqclip` executable: registers the TypeScript loader (tsx), then runs the CLI from source.
import { register } from 'tsx/esm/api';

register();
await import('./cli/main.ts');
