import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * Atomic file replacement for state files: the body goes to a fresh temporary file in the same
 * directory, with an unpredictable name, created exclusively (O_EXCL: never through a planted
 * file or symlink) with mode 0600, then renamed over the target. A reader sees the old file or
 * the new one, never half of one. The temporary file is removed when anything fails.
 */

function tempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(8).toString('hex')}.tmp`);
}

export async function writeFileAtomic(file: string, body: string): Promise<void> {
  const tmp = tempName(file);
  try {
    await fs.promises.writeFile(tmp, body, { mode: 0o600, flag: 'wx' });
    await fs.promises.rename(tmp, file);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
    throw e;
  }
}

export function writeFileAtomicSync(file: string, body: string): void {
  const tmp = tempName(file);
  try {
    fs.writeFileSync(tmp, body, { mode: 0o600, flag: 'wx' });
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
