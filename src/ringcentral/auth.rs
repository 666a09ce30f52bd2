//! The access token of one account: JWT bearer grant, reused until shortly before `expires_in`
//! runs out, then replaced by presenting the JWT again.
//!
//! Re-presenting the JWT (rather than the single-use refresh token) means a lost response never
//! leaves us holding a consumed refresh token. A user has about five parallel sessions, so the
//! token is requested only when needed, never per search.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::config::Secret;

/// The grant type of the JWT flow.
pub const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A live access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub value: Secret,
    /// When to get a new one: before `expires_in` runs out, with a margin for clock and transit.
    pub refresh_at: Instant,
}

impl AccessToken {
    /// Still good to use?
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// The token endpoint's success body (only what we use).
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// Lifetime in seconds; trusted over any documented default.
    #[serde(default)]
    pub expires_in: Option<f64>,
}

impl TokenResponse {
    /// The token with its refresh deadline: a tenth of its life (at most a minute) early.
    pub fn into_token(self) -> AccessToken {
        let life = Duration::from_secs_f64(
            self.expires_in
                .unwrap_or(3600.0)
                .clamp(1.0, 86_400.0 * 30.0),
        );
        let margin = (life / 10).min(Duration::from_secs(60));
        AccessToken {
            value: Secret::new(self.access_token),
            refresh_at: Instant::now() + (life - margin),
        }
    }
}

/// Plain-language meaning of a token-endpoint refusal, by error code (never by message).
pub fn explain_token_error(code: Option<&str>, oauth_error: Option<&str>) -> &'static str {
    match (code, oauth_error) {
        (Some("OAU-147" | "OAU-148"), _) => {
            "the JWT user is locked out of RingCentral: unlock the user in the admin portal"
        }
        (Some("OAU-140"), _) | (_, Some("invalid_grant")) => {
            "the JWT was rejected (expired, revoked, or issued for another app): create a new JWT credential for this app and update jwt/jwt_file"
        }
        (Some("OAU-146" | "OAU-125" | "OAU-112"), _) | (_, Some("unauthorized_client")) => {
            "the app may not use the JWT grant: enable 'JWT auth flow' for the app in the developer console"
        }
        (_, Some("invalid_client")) | (Some("OAU-123"), _) => {
            "the client_id/client_secret pair was rejected: copy both from the app's credentials page"
        }
        _ => "RingCentral refused the token request: check client_id, client_secret and jwt",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokens_are_replaced_before_they_expire() {
        let t = TokenResponse {
            access_token: "x".into(),
            expires_in: Some(3600.0),
        }
        .into_token();
        assert!(t.is_fresh());
        tokio::time::advance(Duration::from_secs(3539)).await;
        assert!(t.is_fresh());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!t.is_fresh(), "refresh a minute before expiry");
        let short = TokenResponse {
            access_token: "x".into(),
            expires_in: Some(2.0),
        }
        .into_token();
        tokio::time::advance(Duration::from_millis(1850)).await;
        assert!(!short.is_fresh(), "short-lived tokens keep a 10% margin");
    }

    #[test]
    fn token_errors_are_explained_by_code() {
        assert!(explain_token_error(Some("OAU-147"), Some("invalid_grant")).contains("locked out"));
        assert!(explain_token_error(Some("OAU-140"), None).contains("JWT was rejected"));
        assert!(explain_token_error(None, Some("invalid_client")).contains("client_secret"));
    }
}
