import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EPERM, ESRCH, SCHED_IDLE, SCHED_NORMAL } from '../../src/os/ffi/libc';
import { FakeThreadSched, helperSchedMode, scheduleHelperThreads, SystemThreadSched } from '../../src/os/sched';

/** Node's helper threads under SCHED_IDLE (src/os/sched.ts): which threads, and what is left alone. */
const normal = (nice = 0) => ({ policy: SCHED_NORMAL, nice, sliceNs: 1_400_000 });
const SCHED_FIFO = 1;

describe("scheduling Node's helper threads", () => {
  it('puts every thread but the main one under SCHED_IDLE, keeping its nice value', () => {
    const sched = new FakeThreadSched({ 100: normal(), 101: normal(), 102: normal(5), 103: normal() });
    const r = scheduleHelperThreads(sched, 100, 'idle');
    expect(r.changed.sort()).toEqual([101, 102, 103]);
    expect(r.failed).toEqual([]);
    expect(sched.attrs.get(100)).toEqual(normal());
    expect(sched.attrs.get(101)).toEqual({ policy: SCHED_IDLE, nice: 0, sliceNs: 0 });
    expect(sched.attrs.get(102)).toEqual({ policy: SCHED_IDLE, nice: 5, sliceNs: 0 });
  });

  it('leaves a thread alone that someone gave another policy', () => {
    const sched = new FakeThreadSched({ 100: normal(), 101: { policy: SCHED_FIFO, nice: 0, sliceNs: 0 }, 102: normal() });
    const r = scheduleHelperThreads(sched, 100, 'idle');
    expect(r.kept).toEqual([101]);
    expect(r.changed).toEqual([102]);
    expect(sched.attrs.get(101)?.policy).toBe(SCHED_FIFO);
  });

  it('skips a thread that ended meanwhile, reports one the kernel refused, and goes on with the rest', () => {
    const sched = new FakeThreadSched({ 100: normal(), 101: normal(), 102: normal(), 103: normal() });
    sched.refuse.set(101, ESRCH);
    sched.refuse.set(102, EPERM);
    const r = scheduleHelperThreads(sched, 100, 'idle');
    expect(r.changed).toEqual([103]);
    expect(r.failed).toEqual([{ tid: 102, message: 'sched_setattr(102) refused' }]);
    expect(sched.attrs.get(102)?.policy).toBe(SCHED_NORMAL);
  });

  it('changes nothing when turned off', () => {
    const sched = new FakeThreadSched({ 100: normal(), 101: normal() });
    expect(scheduleHelperThreads(sched, 100, 'off')).toEqual({ mode: 'off', changed: [], kept: [], failed: [] });
    expect(sched.attrs.get(101)).toEqual(normal());
  });

  it('reads CLADNET_HELPER_SCHED: idle by default, off, and null for anything else', () => {
    expect(helperSchedMode(undefined)).toBe('idle');
    expect(helperSchedMode('')).toBe('idle');
    expect(helperSchedMode('idle')).toBe('idle');
    expect(helperSchedMode('off')).toBe('off');
    expect(helperSchedMode('slice')).toBeNull();
  });

  it('the kernel binding reads and sets a real thread (a child process), as /proc shows it', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const sched = new SystemThreadSched();
    try {
      const tid = child.pid!;
      const before = sched.get(tid);
      expect(before.policy).toBe(SCHED_NORMAL);
      expect(before.sliceNs).toBeGreaterThan(0);
      sched.set(tid, { policy: SCHED_IDLE, nice: before.nice, sliceNs: 0 });
      expect(sched.get(tid).policy).toBe(SCHED_IDLE);
      const stat = fs.readFileSync(`/proc/${tid}/stat`, 'utf8');
      expect(Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38])).toBe(SCHED_IDLE); // proc(5) field 41
      expect(sched.threads()).toContain(process.pid);
      expect(() => sched.get(0x7ffffff0)).toThrow(/sched_getattr\(2147483632\): No such process/);
    } finally {
      sched.close();
      child.kill();
      await new Promise((r) => child.once('exit', r));
    }
  });
});
