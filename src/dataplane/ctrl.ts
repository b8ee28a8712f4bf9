/**
 * The words of the shared control array between the engine (main thread) and its worker. Apart
 * from worker.ts so that the engine can name them without loading the worker's module graph (the
 * whole data plane: AEAD, libcrypto, TUN, UDP, stages) into the main thread's heap, where none of
 * it runs (docs/performance.md, Memory).
 */
export const CTRL_STOP = 0;
export const CTRL_MAIL = 1;
/** Bumped once per loop turn, busy or idle: the service watchdog pings only while it moves. */
export const CTRL_HEARTBEAT = 2;
export const CTRL_WORDS = 3;
