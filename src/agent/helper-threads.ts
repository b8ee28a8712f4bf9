/**
 * Node's helper threads yield the CPU to every other thread (src/os/sched.ts says why). The agent command calls
 * scheduleNodeHelpers first thing, before its logger, its etcd client or its data-plane workers
 * exist, and reports what happened once the logger does.
 */
import type { Logger } from '../log';
import { helperSchedMode, scheduleHelperThreads, SystemThreadSched, type HelperSchedResult } from '../os/sched';

/** idle (default) or off: for A/B runs (bench/README.md). */
export const HELPER_SCHED_ENV = 'CLADNET_HELPER_SCHED';

export interface HelperSchedReport {
  readonly result: HelperSchedResult | null;
  /** Logs the outcome: debug when it went as planned, otherwise one line that says what did not. */
  report(log: Logger): void;
}

export function scheduleNodeHelpers(env: NodeJS.ProcessEnv, mainTid = process.pid): HelperSchedReport {
  const raw = env[HELPER_SCHED_ENV];
  const mode = helperSchedMode(raw);
  let result: HelperSchedResult | null = null;
  let error: string | null = null;
  try {
    const sched = new SystemThreadSched();
    try {
      result = scheduleHelperThreads(sched, mainTid, mode ?? 'idle');
    } finally {
      sched.close();
    }
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  }
  return {
    result,
    report(log: Logger): void {
      const l = log.child({ component: 'sched' });
      if (mode === null) l.warn({ [HELPER_SCHED_ENV]: raw }, `${HELPER_SCHED_ENV} is neither idle nor off: idle used`);
      if (error !== null) l.info({ err: error }, "Node's helper threads keep their scheduling");
      else if (result && result.failed.length > 0) l.info({ failed: result.failed }, "some of Node's helper threads keep their scheduling");
      else if (result) l.debug({ mode: result.mode, threads: result.changed.length, kept: result.kept.length }, "Node's helper threads scheduled");
    },
  };
}
