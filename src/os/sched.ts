/**
 * This process's threads and their CPU scheduling (sched(7)).
 *
 * Node starts helper threads before any of ours exist: V8's platform pool (one thread under
 * --v8-pool-size=1) and its delayed-task thread. TurboFan compiles there, 1-10 ms per function in
 * one go, and a young agent compiles its live path while its first packets flow. A thread that
 * wakes on the CPU such a job holds waits until the job is preempted, which here was often the
 * next scheduler tick, 4 ms at HZ=250: the data-plane worker, or the application whose ping it
 * carries, answers a whole tick late (docs/performance.md, "The ping tail").
 *
 * So the agent puts those helpers under SCHED_IDLE: any other thread that wakes takes their CPU at
 * once. Compiles then wait for idle CPU time, which costs nothing measurable (the live path runs
 * warmed-up code meanwhile). GC work must not wait like that: a GC that waited for a starved
 * helper would stall the thread that collects, so the agent runs V8 with --single-threaded-gc
 * (src/agent/node-flags.ts) and no GC work goes to the helpers. A shorter EEVDF slice for the
 * helpers instead (sched_runtime 0.1 ms, kernel 6.12 and later) was measured and did not help.
 *
 * Only threads that exist when `scheduleHelperThreads` runs are touched: the agent calls it before
 * it starts anything of its own, so the data-plane workers and libuv's pool (created later, by the
 * main thread) keep the main thread's scheduling.
 */
import { readdirSync } from 'node:fs';
import { SCHED_ATTR } from './ffi/abi';
import * as libc from './ffi/libc';
import { allocNative, type NativeBlock } from './ffi/mem';
import { osError } from './errors';

const { SCHED_NORMAL, SCHED_IDLE } = libc;

/** A thread's scheduling: policy, nice, and its EEVDF slice in ns (0 on set: the kernel's default). */
export interface SchedAttr {
  policy: number;
  nice: number;
  sliceNs: number;
}

/**
 * This process's threads, as sched_getattr/sched_setattr see them. get and set throw an EOS
 * CladnetError (with `errno`) on failure; ESRCH means the thread has ended.
 */
export interface ThreadSched {
  /** Thread ids of this process (/proc/self/task). */
  threads(): number[];
  get(tid: number): SchedAttr;
  set(tid: number, attr: SchedAttr): void;
}

/** How the agent schedules Node's helper threads: SCHED_IDLE (default), or left alone. */
export type HelperSchedMode = 'idle' | 'off';

/** CLADNET_HELPER_SCHED (A/B runs): idle (default) or off; null when it names neither. */
export function helperSchedMode(value: string | undefined): HelperSchedMode | null {
  if (value === undefined || value === '' || value === 'idle') return 'idle';
  if (value === 'off') return 'off';
  return null;
}

export interface HelperSchedResult {
  mode: HelperSchedMode;
  /** Threads given the helper scheduling. */
  changed: number[];
  /** Threads left alone because someone had chosen another policy for them. */
  kept: number[];
  /** Threads the kernel refused (the agent runs on; their wake-ups may just wait longer). */
  failed: { tid: number; message: string }[];
}

/** Gives every thread but `mainTid` the helper scheduling of `mode` (see the top of this file). */
export function scheduleHelperThreads(sched: ThreadSched, mainTid: number, mode: HelperSchedMode): HelperSchedResult {
  const out: HelperSchedResult = { mode, changed: [], kept: [], failed: [] };
  if (mode === 'off') return out;
  for (const tid of sched.threads()) {
    if (tid === mainTid) continue;
    try {
      const cur = sched.get(tid);
      if (cur.policy !== SCHED_NORMAL) {
        out.kept.push(tid);
        continue;
      }
      sched.set(tid, { policy: SCHED_IDLE, nice: cur.nice, sliceNs: 0 });
      out.changed.push(tid);
    } catch (e) {
      if ((e as { errno?: number }).errno === libc.ESRCH) continue; // ended meanwhile
      out.failed.push({ tid, message: e instanceof Error ? e.message : String(e) });
    }
  }
  return out;
}

/** The kernel's view (sched_getattr/sched_setattr through syscall(2); glibc 2.36 wraps neither). */
export class SystemThreadSched implements ThreadSched {
  private readonly mem: NativeBlock = allocNative(SCHED_ATTR.size);

  threads(): number[] {
    return readdirSync('/proc/self/task')
      .map(Number)
      .filter((t) => Number.isInteger(t) && t > 0);
  }

  get(tid: number): SchedAttr {
    const { buf, ptr } = this.mem;
    buf.fill(0);
    if (libc.syscall(libc.SYS_sched_getattr, 'int', tid, 'uintptr_t', ptr, 'unsigned int', SCHED_ATTR.size, 'unsigned int', 0) < 0) {
      throw osError(`sched_getattr(${tid})`);
    }
    const off = SCHED_ATTR.off;
    return { policy: buf.readUInt32LE(off.sched_policy), nice: buf.readInt32LE(off.sched_nice), sliceNs: Number(buf.readBigUInt64LE(off.sched_runtime)) };
  }

  set(tid: number, attr: SchedAttr): void {
    const { buf, ptr } = this.mem;
    const off = SCHED_ATTR.off;
    buf.fill(0);
    buf.writeUInt32LE(SCHED_ATTR.size, off.size);
    buf.writeUInt32LE(attr.policy, off.sched_policy);
    buf.writeInt32LE(attr.nice, off.sched_nice);
    buf.writeBigUInt64LE(BigInt(attr.sliceNs), off.sched_runtime);
    if (libc.syscall(libc.SYS_sched_setattr, 'int', tid, 'uintptr_t', ptr, 'unsigned int', 0) < 0) throw osError(`sched_setattr(${tid})`);
  }

  close(): void {
    this.mem.free();
  }
}

/** In memory, for tests: threads with their attributes; `refuse` makes set fail for a tid with that errno. */
export class FakeThreadSched implements ThreadSched {
  readonly attrs = new Map<number, SchedAttr>();
  readonly refuse = new Map<number, number>();

  constructor(threads: Record<number, SchedAttr>) {
    for (const [tid, a] of Object.entries(threads)) this.attrs.set(Number(tid), { ...a });
  }

  threads(): number[] {
    return [...this.attrs.keys()];
  }

  get(tid: number): SchedAttr {
    const a = this.attrs.get(tid);
    if (!a) throw Object.assign(new Error(`no thread ${tid}`), { errno: libc.ESRCH });
    return { ...a };
  }

  set(tid: number, attr: SchedAttr): void {
    const errno = this.refuse.get(tid);
    if (errno !== undefined) throw Object.assign(new Error(`sched_setattr(${tid}) refused`), { errno });
    this.get(tid);
    this.attrs.set(tid, { ...attr });
  }
}
