/**
 * The host's public IPv4 address from its cloud's instance metadata service, for endpoint
 * discovery when a VM sits behind the provider's 1:1 NAT (its interfaces show only the private
 * address). Off unless the `metadata` setting names a provider or `auto`; the agent never asks a
 * web service on the internet.
 *
 * Providers (each a link-local or provider-internal endpoint, reachable only from inside a VM):
 *   aws    IMDSv2: PUT http://169.254.169.254/latest/api/token (X-aws-ec2-metadata-token-ttl-seconds),
 *          then GET /latest/meta-data/public-ipv4 with X-aws-ec2-metadata-token
 *   gcp    GET http://metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/
 *          access-configs/0/external-ip with Metadata-Flavor: Google
 *   azure  GET http://169.254.169.254/metadata/instance/network/interface/0/ipv4/ipAddress/0/
 *          publicIpAddress?api-version=2021-02-01&format=text with Metadata: true
 *   auto   asks all three at once; the first valid answer wins and the other requests are aborted.
 *
 * Contract: never throws and never waits longer than `timeoutMs` (per call, all requests of a
 * provider included, also when the injected fetch ignores its AbortSignal). A non-2xx status, a
 * network error, a timeout, or an answer that is not a usable unicast dotted IPv4 all give null.
 * Redirects are never followed (`redirect: 'manual'`; a 3xx is not 2xx, so null): a metadata
 * service answers in place, and a redirect would send the request and its headers (the AWS
 * token) elsewhere and take the answer from there.
 */
import { parseIpv4 } from '../util/ipv4';

export type MetadataProvider = 'aws' | 'gcp' | 'azure';
export const METADATA_PROVIDERS: readonly MetadataProvider[] = Object.freeze(['aws', 'gcp', 'azure'] as const);

/** The part of the global fetch this module uses (global fetch satisfies it; tests pass a fake). */
export type FetchLike = (
  url: string,
  init: { method?: string; headers?: Record<string, string>; signal?: AbortSignal; redirect?: 'manual' },
) => Promise<{ ok: boolean; status: number; redirected?: boolean; text(): Promise<string> }>;

export interface MetadataAnswer {
  readonly provider: MetadataProvider;
  /** Dotted IPv4, e.g. "203.0.113.7". */
  readonly ip: string;
}

export const METADATA_TIMEOUT_MS = 1000;

export const AWS_TOKEN_URL = 'http://169.254.169.254/latest/api/token';
export const AWS_PUBLIC_IPV4_URL = 'http://169.254.169.254/latest/meta-data/public-ipv4';
export const GCP_EXTERNAL_IP_URL =
  'http://metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip';
export const AZURE_PUBLIC_IP_URL =
  'http://169.254.169.254/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress?api-version=2021-02-01&format=text';

/** Longest answer body we look at; an address is at most 15 characters. */
const MAX_ANSWER = 64;

/** A dotted IPv4 that can be a public endpoint: not 0/8, 127/8, 169.254/16, multicast or 240/4. */
export function usableIpv4(text: string): string | null {
  const s = text.trim();
  if (s.length > 15) return null;
  const ip = parseIpv4(s);
  if (ip === null) return null;
  const a = ip >>> 24;
  const b = (ip >>> 16) & 255;
  if (a === 0 || a === 127 || a >= 224 || (a === 169 && b === 254)) return null;
  return s;
}

async function getText(fetch: FetchLike, url: string, init: Parameters<FetchLike>[1]): Promise<string | null> {
  const res = await fetch(url, { ...init, redirect: 'manual' });
  if (!res.ok || res.redirected === true) return null; // a fetch that followed a redirect anyway
  const body = await res.text();
  return typeof body === 'string' && body.length <= MAX_ANSWER ? body : null;
}

async function ask(provider: MetadataProvider, fetch: FetchLike, signal: AbortSignal): Promise<string | null> {
  switch (provider) {
    case 'aws': {
      const token = await getText(fetch, AWS_TOKEN_URL, {
        method: 'PUT',
        headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '60' },
        signal,
      });
      if (token === null || token.trim() === '' || signal.aborted) return null;
      return getText(fetch, AWS_PUBLIC_IPV4_URL, { method: 'GET', headers: { 'X-aws-ec2-metadata-token': token.trim() }, signal });
    }
    case 'gcp':
      return getText(fetch, GCP_EXTERNAL_IP_URL, { method: 'GET', headers: { 'Metadata-Flavor': 'Google' }, signal });
    case 'azure':
      return getText(fetch, AZURE_PUBLIC_IP_URL, { method: 'GET', headers: { Metadata: 'true' }, signal });
  }
}

/** One provider, answered within the shared deadline, or null. */
async function askOne(provider: MetadataProvider, fetch: FetchLike, signal: AbortSignal): Promise<MetadataAnswer | null> {
  try {
    const text = await ask(provider, fetch, signal);
    const ip = text === null ? null : usableIpv4(text);
    return ip === null ? null : { provider, ip };
  } catch {
    return null; // network error, abort, a fake that throws: all "no answer"
  }
}

/**
 * The public IPv4 from `provider`'s metadata service (or the first of them to answer, with
 * 'auto'), or null. Never throws.
 */
export async function discoverPublicIp(
  provider: MetadataProvider | 'auto',
  fetch: FetchLike,
  timeoutMs = METADATA_TIMEOUT_MS,
): Promise<MetadataAnswer | null> {
  const providers: readonly MetadataProvider[] =
    provider === 'auto' ? METADATA_PROVIDERS : METADATA_PROVIDERS.includes(provider) ? [provider] : [];
  if (providers.length === 0) return null;
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<null>((resolve) => {
    timer = setTimeout(() => {
      abort.abort();
      resolve(null);
    }, Math.max(0, timeoutMs));
    timer.unref?.();
  });
  const firstValid = new Promise<MetadataAnswer | null>((resolve) => {
    let left = providers.length;
    for (const p of providers) {
      void askOne(p, fetch, abort.signal).then((answer) => {
        if (answer) resolve(answer);
        else if (--left === 0) resolve(null);
      });
    }
  });
  try {
    return await Promise.race([firstValid, deadline]);
  } finally {
    clearTimeout(timer);
    abort.abort(); // stop the requests still running
  }
}
