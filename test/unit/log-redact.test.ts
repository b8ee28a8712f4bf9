/** The root logger's redaction list: keys and etcd passwords never reach a log line. */
import { describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../../src/config/config';
import { etcdOptionsFrom } from '../../src/control/etcd';
import { createRootLogger } from '../../src/log';

function capture() {
  const lines: string[] = [];
  const log = createRootLogger('info', { write: (s: string) => void lines.push(s) });
  return { log, lines };
}

describe('log redaction', () => {
  it('redacts a password at the top, one and two levels down, and the config field etcdPassword', () => {
    const { log, lines } = capture();
    log.info({ password: 'hunter2-top' }, 'a');
    log.info({ auth: { username: 'host-demo-h1', password: 'hunter2-auth' } }, 'b');
    log.info({ opts: { auth: { username: 'host-demo-h1', password: 'hunter2-deep' } } }, 'c');
    log.info({ etcdPassword: 'hunter2-cfg' }, 'd');
    log.child({ component: 'etcd' }).warn({ cfg: { etcdPassword: 'hunter2-child' } }, 'e');
    const text = lines.join('');
    expect(lines).toHaveLength(5);
    expect(text).not.toMatch(/hunter2/);
    expect(text.match(/\[redacted\]/g)).toHaveLength(5);
    expect(JSON.parse(lines[1]!).auth).toEqual({ username: 'host-demo-h1', password: '[redacted]' }); // the user name stays
  });

  it('redacts the password in the etcd options built from a real agent config', () => {
    const { log, lines } = capture();
    const cfg = loadAgentConfig({ flags: { network: 'demo', etcd: 'https://198.18.0.10:2379', etcdUser: 'u', etcdPassword: 'hunter2-real' }, env: {} });
    log.info({ cfg, etcd: etcdOptionsFrom(cfg) }, 'starting');
    expect(lines.join('')).not.toContain('hunter2-real');
    const line = JSON.parse(lines[0]!);
    expect([line.cfg.etcdPassword, line.etcd.auth.password]).toEqual(['[redacted]', '[redacted]']);
  });

  it('still redacts keys, also one level down', () => {
    const { log, lines } = capture();
    log.info({ privateKey: 'k1', peer: { sendKey: 'k2', key: 'k3' }, sendKey: 'k4' }, 'keys');
    expect(lines.join('')).not.toMatch(/"k[1-4]"/);
  });
});
