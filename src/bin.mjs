#!/usr/bin/env node
// The `vqclip` executable: registers the TypeScript loader (tsx), then runs the CLI from source.
import { register } from 'tsx/esm/api';

// Exit quietly when whoever reads stdout goes away (e.g. `vqclip weights list | head`).
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

register();
await import('./cli/main.ts');
