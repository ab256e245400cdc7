/**
 * Names for the ways a certificate check fails, so both sides log which one
 * instead of the transport error it surfaces as ("socket hang up",
 * ECONNRESET). Node reports OpenSSL's verify results as error codes on the
 * side that checked (`authorizationError`, or the client's 'error').
 */
export type CertificateProblem =
  | 'unknown-ca'
  | 'expired'
  | 'not-yet-valid'
  | 'wrong-name'
  | 'revoked'
  | 'no-certificate'
  | 'no-common-name'
  | 'invalid';

const BY_CODE: Record<string, CertificateProblem> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unknown-ca',
  UNABLE_TO_GET_ISSUER_CERT: 'unknown-ca',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unknown-ca',
  SELF_SIGNED_CERT_IN_CHAIN: 'unknown-ca',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'unknown-ca',
  CERT_SIGNATURE_FAILURE: 'unknown-ca',
  CERT_UNTRUSTED: 'unknown-ca',
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not-yet-valid',
  CERT_REVOKED: 'revoked',
  ERR_TLS_CERT_ALTNAME_INVALID: 'wrong-name',
};

const DESCRIPTIONS: Record<CertificateProblem, string> = {
  'unknown-ca': 'certificate not issued by a trusted CA',
  expired: 'certificate expired',
  'not-yet-valid': 'certificate not yet valid',
  'wrong-name': 'certificate does not carry the expected name',
  revoked: 'certificate revoked',
  'no-certificate': 'no certificate presented',
  'no-common-name': 'certificate has no common name',
  invalid: 'certificate refused',
};

/** The problem an OpenSSL verify code or Node TLS error code stands for; null when it is not a certificate problem. */
export function certificateProblemOf(code: string | undefined | null): CertificateProblem | null {
  if (code === undefined || code === null) return null;
  if (code in BY_CODE) return BY_CODE[code];
  return /CERT|ISSUER/.test(code) ? 'invalid' : null;
}

export function describeCertificateProblem(problem: CertificateProblem): string {
  return DESCRIPTIONS[problem];
}
