// How the CLI reports failures: known problems (bad files, bad input) as one clear line with the fix and exit
// code 2; anything else as an internal error with the stack (a bug to report).
import { FormatError } from '../formats/host-tensor.ts';

/** A problem with what the user asked for or supplied; the message says what to do. */
export class UserError extends Error {
  constructor(message: string, readonly hint?: string) {
    super(message);
    this.name = 'UserError';
  }
}

export function reportError(err: unknown): number {
  if (err instanceof UserError) {
    process.stderr.write(`vqclip: ${err.message}${err.hint ? `\n  fix: ${err.hint}` : ''}\n`);
    return 2;
  }
  if (err instanceof FormatError) {
    process.stderr.write(`vqclip: ${err.file}: ${err.problem}${err.hint ? `\n  fix: ${err.hint}` : ''}\n`);
    return 2;
  }
  process.stderr.write(`vqclip: internal error (please report it): ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return 1;
}
