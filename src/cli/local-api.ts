/** The diagnostic commands' side of the local API: one POST to the agent's socket, JSON back. */
import * as http from 'node:http';
import { CladnetError, type ErrorCode } from '../errors';

export interface ApiAnswer {
  status: number;
  body: unknown;
}

/** POSTs `path` (with its query string) to the agent at `socketPath`; rejects ESTATUS when it cannot be reached. */
export function postLocal(socketPath: string, path: string, timeoutMs: number): Promise<ApiAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path, method: 'POST', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown });
        } catch (e) {
          reject(new CladnetError('ESTATUS', `bad answer from ${socketPath}: ${(e as Error).message}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) =>
      reject(new CladnetError('ESTATUS', `cannot reach the agent at ${socketPath}: ${e.message} (is cladnet agent running?)`, { transient: true })),
    );
    req.end();
  });
}

/** The agent refused the request: its message and code as a CladnetError (ESTATUS when it gave none). */
export function refusal(a: ApiAnswer): CladnetError {
  const b = (a.body ?? {}) as { error?: unknown; code?: unknown };
  const msg = typeof b.error === 'string' ? b.error : `the agent answered ${a.status}`;
  return new CladnetError(typeof b.code === 'string' ? (b.code as ErrorCode) : 'ESTATUS', msg);
}
