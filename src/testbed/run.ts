import { spawn, spawnSync } from 'node:child_process';

/**
 * The one command runner of the test bed. Every `ip`, `etcdctl`, `ping`... goes through here, so a
 * failure always names the command line and its stderr, and tests can swap in a recording runner.
 */
export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  /** Exit code; -1 when the process was killed by a signal or could not start. */
  readonly code: number;
}

export interface RunOptions {
  /** Written to the process's stdin, which is then closed. */
  readonly input?: string | Buffer;
  /** SIGKILL after this long (default 30 s). The result then has code -1. */
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** A command that exited non-zero (or could not start, or timed out). */
export class CommandError extends Error {
  readonly code = 'ECOMMAND';
  readonly transient = false;
  constructor(
    readonly cmd: readonly string[],
    readonly result: RunResult,
  ) {
    const err = result.stderr.trim() || result.stdout.trim();
    super(`command failed (exit ${result.code}): ${formatCmd(cmd)}${err ? `\n${err}` : ''}`);
    this.name = 'CommandError';
  }
}

/** A runner as the test bed uses it; `recordingRunner` in tests implements the same shape. */
export type Runner = (cmd: readonly string[], opts?: RunOptions) => Promise<RunResult>;

/** Runs `cmd` (argv, no shell) and resolves with its output and exit code. Never rejects. */
export function run(cmd: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const [file, ...args] = cmd;
    if (!file) {
      resolve({ stdout: '', stderr: 'empty command', code: -1 });
      return;
    }
    const child = spawn(file, args, { env: opts.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let spawnError: Error | undefined;
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => (spawnError = e));
    child.stdin.on('error', () => {}); // the child may exit without reading its input
    child.stdin.end(opts.input);
    child.on('close', (code) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString() + (spawnError ? String(spawnError.message) : '');
      resolve({ stdout: Buffer.concat(out).toString(), stderr, code: code ?? -1 });
    });
  });
}

/** Like `run` but throws a CommandError unless the exit code is 0. */
export async function runOk(cmd: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, opts);
  if (r.code !== 0) throw new CommandError(cmd, r);
  return r;
}

/** Synchronous variant for process-exit hooks, where nothing asynchronous runs any more. */
export function runSync(cmd: readonly string[], timeoutMs = 5_000): RunResult {
  const [file, ...args] = cmd;
  const r = spawnSync(file ?? 'false', args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  return { stdout: r.stdout ?? '', stderr: r.stderr ?? String(r.error ?? ''), code: r.status ?? -1 };
}

/** The same command run inside network namespace `ns`. */
export function inNs(ns: string, cmd: readonly string[]): string[] {
  return ['ip', 'netns', 'exec', ns, ...cmd];
}

/** A shell-like rendering for messages and transcripts (not for execution). */
export function formatCmd(cmd: readonly string[]): string {
  return cmd.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** A runner that records every command and answers from `respond` (default: success, no output). */
export function recordingRunner(respond: (cmd: readonly string[]) => Partial<RunResult> = () => ({})): {
  runner: Runner;
  transcript: string[];
} {
  const transcript: string[] = [];
  const runner: Runner = async (cmd) => {
    transcript.push(formatCmd(cmd));
    return { stdout: '', stderr: '', code: 0, ...respond(cmd) };
  };
  return { runner, transcript };
}
