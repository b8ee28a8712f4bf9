import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { postLocal } from '../../src/cli/local-api';
import { CladnetError } from '../../src/errors';
import { StatusServer } from '../../src/status/server';
import type { StatusDocument } from '../../src/status/types';

/** The local API's extra routes (ping, netcheck): async answers, error codes as HTTP statuses, a stop that does not wait for them. */
describe('status server: extra routes', () => {
  let dir: string;
  let server: StatusServer | undefined;

  afterEach(async () => {
    await server?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function start(routes: ConstructorParameters<typeof StatusServer>[2]): Promise<string> {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-routes-'));
    const sock = path.join(dir, 's.sock');
    server = new StatusServer(sock, () => ({ version: 1 }) as unknown as StatusDocument, routes);
    await server.start();
    return sock;
  }

  it('passes the query string, awaits the answer, and maps error codes to 404, 503 and 400', async () => {
    const sock = await start({
      'POST /v1/echo': async (q) => ({ peer: q.get('peer'), timeoutMs: Number(q.get('timeoutMs')) }),
      'POST /v1/fail': (q) => {
        const code = q.get('code');
        if (code === 'ENOPEER') throw new CladnetError('ENOPEER', 'no peer named "x"');
        if (code === 'ESTATUS') throw new CladnetError('ESTATUS', 'starting', { transient: true });
        if (code === 'ECONFIG') return Promise.reject(new CladnetError('ECONFIG', 'timeoutMs: bad'));
        throw new Error('boom');
      },
    });
    expect(await postLocal(sock, '/v1/echo?peer=h%202&timeoutMs=250', 2_000)).toEqual({ status: 200, body: { peer: 'h 2', timeoutMs: 250 } });
    expect(await postLocal(sock, '/v1/fail?code=ENOPEER', 2_000)).toEqual({ status: 404, body: { error: 'no peer named "x"', code: 'ENOPEER' } });
    expect((await postLocal(sock, '/v1/fail?code=ESTATUS', 2_000)).status).toBe(503);
    expect(await postLocal(sock, '/v1/fail?code=ECONFIG', 2_000)).toEqual({ status: 400, body: { error: 'timeoutMs: bad', code: 'ECONFIG' } });
    expect(await postLocal(sock, '/v1/fail', 2_000)).toEqual({ status: 500, body: { error: 'boom' } });
    // The status route is still there; a GET of a POST route is not.
    expect((await postLocal(sock, '/v1/nothing', 2_000)).status).toBe(404);
  });

  it('a stop does not wait for a request still in flight', async () => {
    const sock = await start({ 'POST /v1/slow': () => new Promise((r) => setTimeout(r, 20_000).unref()) });
    const pending = postLocal(sock, '/v1/slow', 30_000).catch((e: CladnetError) => e.code);
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    await server!.stop();
    server = undefined;
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(await pending).toBe('ESTATUS');
  });
});
