import * as fs from 'node:fs';
import { run } from '../../src/testbed/run';

/** The installed Debian version of `pkg`, or null. */
export async function dpkgVersion(pkg: string): Promise<string | null> {
  const r = await run(['dpkg-query', '-W', '-f', '${Version}', pkg], { timeoutMs: 5_000 });
  return r.code === 0 && r.stdout.trim() ? r.stdout.trim() : null;
}

/**
 * Undo steps collected while a tunnel comes up: if a later step throws, `unwind` runs the ones
 * recorded so far (newest first) so a half-started anchor leaves nothing behind.
 */
export class Undo {
  private readonly steps: (() => Promise<void> | void)[] = [];

  push(step: () => Promise<void> | void): void {
    this.steps.push(step);
  }

  async unwind(): Promise<void> {
    while (this.steps.length > 0) {
      try {
        await this.steps.pop()!();
      } catch {
        /* best effort: the topology teardown is the backstop */
      }
    }
  }
}

/** What a log file says about a failure: its error lines if it has any, else its last lines. */
export function tailFile(file: string, lines = 3): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch {
    return '(no log)';
  }
  const all = text.split('\n');
  const errors = all.filter((l) => /level=(error|fatal)|\berror\b|\bfatal\b/i.test(l));
  return (errors.length > 0 ? errors : all).slice(-lines).join('\n');
}
