// Writing output files safely: the bytes go to a temporary file in the same folder, which is then moved into place,
// so an interrupted run never leaves a half-written file; an existing file is kept unless overwriting is asked for.
import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../cli/errors.ts';

/** Throws a UserError when `file` exists and `force` is not set (call before expensive work). */
export function checkWritable(file: string, force = false): void {
  if (!force && fs.existsSync(file)) throw new UserError(`${file} already exists`, 'pass --force to overwrite it, or choose another -o path');
  const dir = path.dirname(path.resolve(file));
  if (!fs.existsSync(dir)) throw new UserError(`cannot write ${file}: folder ${dir} does not exist`, 'create the folder or choose another -o path');
}

/** Writes `bytes` to `file` via temp file + rename; without `force` it fails (UserError) rather than replace a file. */
export function writeFileAtomic(file: string, bytes: Uint8Array, force = false): void {
  checkWritable(file, force);
  const tmp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.partial-${process.pid}-${Date.now()}`);
  fs.writeFileSync(tmp, bytes, { flag: 'wx' });
  try {
    if (force) fs.renameSync(tmp, file);
    else {
      // link() fails if the target appeared meanwhile, so a file created by someone else is never replaced.
      try {
        fs.linkSync(tmp, file);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EEXIST') throw new UserError(`${file} already exists`, 'pass --force to overwrite it, or choose another -o path');
        // File systems without hard links: the existence check above has to do.
        if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EXDEV') fs.renameSync(tmp, file);
        else throw err;
      }
    }
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}
