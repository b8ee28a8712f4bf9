/**
 * First boot with a join token: when the certificate file does not exist yet and a token is
 * configured (`token`, `tokenFile`), the host enrols itself (src/control/enroll.ts) with the key
 * it just made, and stores its certificate where `cert` points (the state dir by default). Then
 * the token is wiped: the delegate secret in memory at once (enroll.ts), the token file
 * overwritten and removed. A token given inline (flag, environment, config file) cannot be
 * removed from there by the agent: it logs a warning saying so.
 *
 * Later starts find the certificate and never look at the token again (a leftover token file is
 * still wiped).
 */
import * as fs from 'node:fs';
import type { Etcd3 } from 'etcd3';
import type { AgentConfig } from '../config/config';
import { writeCertFile } from '../control/credentials';
import type { Logger } from '../log';

export function hasToken(cfg: AgentConfig): boolean {
  return cfg.token !== undefined || cfg.tokenFile !== undefined;
}

/** Enrols when needed; true when it did. Throws the enrolment's refusal (ETOKEN*, EKEY, EETCD). */
export async function enrolIfNeeded(cfg: AgentConfig, client: () => Etcd3, publicKey: string, log: Logger): Promise<boolean> {
  if (!hasToken(cfg)) return false;
  // Loaded only with a token: an agent that has its certificate never holds the enrolment's and the
  // token's modules (docs/performance.md, Memory).
  const { enrollWithToken } = await import('../control/enroll');
  const { readTokenFile, wipeTokenFile } = await import('../control/token');
  let enrolled = false;
  if (!fs.existsSync(cfg.cert)) {
    const token = cfg.token ?? readTokenFile(cfg.tokenFile!);
    const r = await enrollWithToken(client(), { network: cfg.network, name: cfg.name, publicKey, token, log });
    writeCertFile(cfg.cert, { trustAnchor: r.trustAnchor, cert: r.cert, spec: r.spec });
    log.info(
      { tokenId: r.cert.token, use: r.use, overlayIp: r.cert.overlayIp, serial: r.cert.serial, notAfter: r.cert.notAfter, cert: cfg.cert, recovered: r.recovered },
      'joined the network with a token: certificate stored',
    );
    enrolled = true;
  }
  if (cfg.tokenFile !== undefined && fs.existsSync(cfg.tokenFile)) {
    const err = wipeTokenFile(cfg.tokenFile);
    if (err === null) log.info({ file: cfg.tokenFile }, 'token file wiped and removed (the host has its certificate)');
    else log.warn({ file: cfg.tokenFile, err }, 'could not remove the token file: delete it by hand');
  }
  if (cfg.token !== undefined) {
    log.warn('a join token is set inline (--token, CLADNET_TOKEN or "token" in the config file): the host has its certificate; remove the token from there');
  }
  return enrolled;
}
