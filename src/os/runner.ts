/**
 * Every external command the agent runs (`ip`, `sysctl`) goes through one runner, so tests can
 * swap in a recorder and compare the exact transcript.
 */
import { execFile } from 'node:child_process';
import { CladnetError } from '../errors';

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CommandRunner {
  run(argv: readonly string[]): Promise<CommandResult>;
}

export const execRunner: CommandRunner = {
  run(argv) {
    return new Promise((resolve) => {
      execFile(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 10_000 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout, stderr });
      });
    });
  },
};

export async function runChecked(runner: CommandRunner, argv: readonly string[]): Promise<string> {
  const r = await runner.run(argv);
  if (r.code !== 0) {
    throw new CladnetError('EOS', `${argv.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`, {
      transient: true,
    });
  }
  return r.stdout;
}

/** A runner that records commands and answers from a script: for unit tests. */
export class RecordingRunner implements CommandRunner {
  readonly transcript: string[] = [];
  constructor(private readonly answer: (argv: readonly string[]) => CommandResult = () => ({ code: 0, stdout: '', stderr: '' })) {}
  async run(argv: readonly string[]): Promise<CommandResult> {
    this.transcript.push(argv.join(' '));
    return this.answer(argv);
  }
}
