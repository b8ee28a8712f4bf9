/**
 * An etcd password never crosses a network in the clear unless the operator says so: a user with a
 * plain http:// endpoint other than loopback is refused (EINSECURE) before anything connects;
 * etcdAllowInsecurePassword turns the refusal into a loud warning. Nothing here talks to the
 * endpoints (198.18.0.10 is a test-bed address; the refusal comes first, clients are closed unused).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli';
import { loadAgentConfig } from '../../src/config/config';
import { cleartextEndpoints } from '../../src/control/credentials';
import { createEtcd, etcdOptionsFrom } from '../../src/control/etcd';
import { CladnetError } from '../../src/errors';

const REMOTE = 'http://198.18.0.10:2379';
const auth = { username: 'host-demo-h1', password: 'secret' };

function thrown(f: () => unknown): CladnetError {
  try {
    f();
  } catch (e) {
    return e as CladnetError;
  }
  return expect.unreachable('expected a refusal');
}

const warnings: Error[] = [];
const onWarning = (w: Error) => void warnings.push(w);
process.on('warning', onWarning);
afterEach(() => {
  warnings.length = 0;
});

describe('etcd password transport', () => {
  it('cleartext means plain http:// to anything but loopback', () => {
    expect(cleartextEndpoints([REMOTE, 'https://198.18.0.11:2379', 'http://127.0.0.1:2379', 'http://127.1.2.3:2379', 'http://localhost:2379', 'http://[::1]:2379'])).toEqual([REMOTE]);
    expect(cleartextEndpoints(['http://198.18.0.12:2379', 'http://[2001:db8::1]:2379'])).toEqual(['http://198.18.0.12:2379', 'http://[2001:db8::1]:2379']);
  });

  it('a password with a plain http:// endpoint is refused with EINSECURE; https, loopback or no password pass', () => {
    const e = thrown(() => createEtcd({ endpoints: ['https://198.18.0.11:2379', REMOTE], auth }));
    expect([e.code, e.field]).toEqual(['EINSECURE', 'etcd']);
    expect(e.message).toContain('unencrypted to http://198.18.0.10:2379');
    expect(e.message).not.toContain('secret');
    // Scheme-less endpoints are http.
    expect(thrown(() => createEtcd({ endpoints: ['198.18.0.10:2379'], auth })).code).toBe('EINSECURE');
    for (const opts of [{ endpoints: [REMOTE] }, { endpoints: ['https://198.18.0.11:2379'], auth }, { endpoints: ['http://127.0.0.1:2379'], auth }]) {
      createEtcd(opts).close();
    }
    expect(warnings).toEqual([]);
  });

  it('etcdAllowInsecurePassword lets it through with a warning on stderr, once', async () => {
    createEtcd({ endpoints: [REMOTE], auth, allowInsecurePassword: true }).close();
    createEtcd({ endpoints: [REMOTE], auth, allowInsecurePassword: true }).close();
    await new Promise((r) => setImmediate(r)); // 'warning' is emitted on the next tick
    expect(warnings.map((w) => (w as Error & { code?: string }).code)).toEqual(['CLADNET_INSECURE_ETCD_PASSWORD']);
    expect(warnings[0]!.message).toMatch(/^WARNING: the etcd password would be sent unencrypted to http:\/\/198\.18\.0\.10:2379/);
  });

  it('the agent setting comes from flag, env or file and defaults to false', () => {
    const base = { flags: { network: 'demo', etcd: REMOTE, etcdUser: 'u', etcdPassword: 'p' }, env: {} };
    const off = loadAgentConfig(base);
    expect(off.etcdAllowInsecurePassword).toBe(false);
    expect(thrown(() => createEtcd(etcdOptionsFrom(off))).code).toBe('EINSECURE');
    const on = loadAgentConfig({ ...base, env: { CLADNET_ETCD_ALLOW_INSECURE_PASSWORD: 'true' } });
    expect(on.etcdAllowInsecurePassword).toBe(true);
    expect(etcdOptionsFrom(on).allowInsecurePassword).toBe(true);
  });

  it('cladnet network and host commands refuse too, before connecting', async () => {
    const args = ['node', 'cladnet', 'network', 'list', '--etcd', REMOTE, '--etcd-user', 'u', '--etcd-password', 'p'];
    const err = await buildProgram().parseAsync(args).then(
      () => null,
      (e: unknown) => e as CladnetError,
    );
    expect(err?.code).toBe('EINSECURE');
  });
});
