// Ctrl-C for long runs: the first press asks the run to stop after its current step (it then saves what it has),
// a second press exits at once.
export function interruptible(what = 'iteration'): { signal: AbortSignal; release: () => void } {
  const ac = new AbortController();
  const onSigint = () => {
    if (ac.signal.aborted) process.exit(130);
    process.stderr.write(`\nvqclip: stopping after this ${what} (Ctrl-C again to quit at once)\n`);
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  return { signal: ac.signal, release: () => process.off('SIGINT', onSigint) };
}
