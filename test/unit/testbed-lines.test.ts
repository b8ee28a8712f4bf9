import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import type { ChildProcess } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { collectLines, startPings } from '../../src/testbed/traffic';
import type { Topology } from '../../src/testbed/topology';

/** A child process as collectLines sees it: stdout, stderr, exit and close, driven by hand. */
function fakeChild() {
  const c = new EventEmitter() as EventEmitter & { stdout: PassThrough; stderr: PassThrough; exitCode: number | null; signalCode: string | null };
  c.stdout = new PassThrough();
  c.stderr = new PassThrough();
  c.exitCode = null;
  c.signalCode = null;
  const exit = (code: number) => {
    c.exitCode = code;
    c.emit('exit', code, null);
  };
  return { child: c as unknown as ChildProcess, c, exit };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('collectLines (test bed)', () => {
  it("finds a last line that comes through the pipe after the child's exit event", async () => {
    // The paced sender prints its result and exits at once; Node may report the exit before the
    // pipe has delivered that line (a full-suite run failed on "process exited (0)" so).
    const { child, c, exit } = fakeChild();
    const lines = collectLines(child);
    const got = lines.waitFor((l) => l.startsWith('{'), 5_000, 'the result');
    exit(0);
    await tick();
    c.stdout.write('{"bytes":1}\n');
    await tick();
    c.emit('close', 0, null);
    await expect(got).resolves.toBe('{"bytes":1}');
  });

  it('fails once the child is gone (stdio closed) without the line, with its stderr', async () => {
    const { child, c, exit } = fakeChild();
    const lines = collectLines(child);
    const got = lines.waitFor((l) => l === 'CONNECTED', 5_000, 'the sender to connect');
    c.stderr.write('sender: connect ECONNREFUSED\n');
    c.stdout.write('something else\n');
    exit(1);
    await tick();
    c.emit('close', 1, null);
    await expect(got).rejects.toThrow(/waiting for the sender to connect: process exited \(1\) sender: connect ECONNREFUSED/);
  });

  it('times out when the child neither prints the line nor goes', async () => {
    const { child } = fakeChild();
    await expect(collectLines(child).waitFor(() => true, 20, 'anything')).rejects.toThrow(/timed out waiting for anything/);
  });
});

describe('startPings (test bed)', () => {
  it("waitReplyAfter finds a reply that comes through the pipe after ping's exit event", async () => {
    const { child, c, exit } = fakeChild();
    const topo = { spawn: () => child } as unknown as Topology;
    const run = startPings(topo, 'ns', '100.64.0.2');
    const t = Date.now();
    const got = run.waitReplyAfter(t - 1_000, 5_000);
    exit(0);
    await tick();
    const at = (t / 1000).toFixed(6);
    c.stdout.write(`[${at}] 64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=0.512 ms\n`);
    await tick();
    c.emit('close', 0, null);
    expect((await got)?.rttMs).toBeCloseTo(0.512);
  });

  it('waitReplyAfter gives null once ping is gone without a reply', async () => {
    const { child, c, exit } = fakeChild();
    const run = startPings({ spawn: () => child } as unknown as Topology, 'ns', '100.64.0.2');
    const got = run.waitReplyAfter(Date.now(), 5_000);
    exit(1);
    await tick();
    c.emit('close', 1, null);
    await expect(got).resolves.toBeNull();
  });
});
