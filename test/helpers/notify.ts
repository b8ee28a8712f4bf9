import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';

/** One datagram the receiver got: the sender's pid (SCM_CREDENTIALS) and its payload. */
export interface NotifyDatagram {
  pid: number | null;
  msg: string;
  /** performance.now() in the test process when the line arrived. */
  at: number;
}

/**
 * A stand-in for systemd's notification socket: test/helpers/notify-receiver.py (python3, which
 * has unix datagram sockets and SO_PASSCRED) bound at `addr` ("/path" or "@abstract"), its
 * datagrams collected here. Pass `addr` to the process under test as NOTIFY_SOCKET.
 */
export class NotifyReceiver {
  readonly got: NotifyDatagram[] = [];
  private proc?: ChildProcess;
  private waiters: (() => void)[] = [];
  /** Called for each datagram as it arrives (before any waitFor resolves). */
  onDatagram?: (d: NotifyDatagram) => void;

  private constructor(readonly addr: string) {}

  static async start(addr: string): Promise<NotifyReceiver> {
    const r = new NotifyReceiver(addr);
    const proc = spawn('python3', [path.join(__dirname, 'notify-receiver.py'), addr], { stdio: ['pipe', 'pipe', 'inherit'] });
    r.proc = proc;
    await new Promise<void>((resolve, reject) => {
      proc.once('error', reject);
      proc.once('exit', (code) => reject(new Error(`notify receiver exited (${code}) before binding ${addr}`)));
      readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
        const j = JSON.parse(line) as { bound?: boolean; pid?: number | null; msg?: string };
        if (j.bound) resolve();
        else {
          const d = { pid: j.pid ?? null, msg: j.msg ?? '', at: performance.now() };
          r.got.push(d);
          r.onDatagram?.(d);
          for (const w of r.waiters.splice(0)) w();
        }
      });
    });
    return r;
  }

  /** Every field assignment received so far ("READY=1", "STATUS=..."), in order. */
  fields(): string[] {
    return this.got.flatMap((d) => d.msg.split('\n'));
  }

  /** Resolves with the first datagram (from index `from` on) that has a field matching `re`. */
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<NotifyDatagram & { index: number }> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const index = this.got.findIndex((d, i) => i >= from && d.msg.split('\n').some((f) => re.test(f)));
      if (index >= 0) return { ...this.got[index]!, index };
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no ${re} from the notify socket in ${timeoutMs} ms; got ${JSON.stringify(this.fields())}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.stdin?.end();
    const t = setTimeout(() => p.kill('SIGKILL'), 2_000);
    await exited;
    clearTimeout(t);
  }
}
