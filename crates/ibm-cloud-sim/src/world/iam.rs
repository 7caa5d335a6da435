//! IAM: API key -> access token (a JWT), and the bearer check of every Resource Controller call.

use super::*;

/// IAM's own timestamp format in error contexts: `29.10.2019 12:31:00:300 GMT`.
pub(super) fn iam_time(unix: u64) -> String {
    let iso = rfc3339(unix); // 2019-10-29T12:31:00.000Z
    format!(
        "{}.{}.{} {}:{}:{}:000 GMT",
        &iso[8..10],
        &iso[5..7],
        &iso[0..4],
        &iso[11..13],
        &iso[14..16],
        &iso[17..19]
    )
}

impl World {
    /// `POST /identity/token` with a form body.
    pub fn token(&mut self, form: &HashMap<String, String>, txn: &str) -> Reply {
        let now = now_unix();
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ibm:params:oauth:grant-type:apikey")
        {
            return Reply::iam_error(
                400,
                "BXNIM0109E",
                "Property missing or empty. Property=grant_type",
                txn,
                now,
            );
        }
        let Some(api_key) = form.get("apikey").filter(|k| !k.is_empty()) else {
            return Reply::iam_error(
                400,
                "BXNIM0109E",
                "Property missing or empty. Property=apikey",
                txn,
                now,
            );
        };
        if !self.callers.contains_key(api_key) {
            return Reply::iam_error(
                400,
                "BXNIM0415E",
                "Provided API key could not be found",
                txn,
                now,
            );
        }
        self.tokens.retain(|_, t| t.expires_at > now);
        let scope = form
            .get("scope")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "ibm openid".to_owned());
        let jti = self.new_hex("jti", 32);
        let caller = &self.callers[api_key];
        let subject = jwt::Subject {
            account_id: &caller.account_id,
            service_id: &caller.service_id,
            name: &caller.name,
        };
        let token = jwt::encode(
            &jwt::claims(&subject, &jti, now, self.token_ttl, &scope),
            &self.token_secret,
        );
        let expiration = now + self.token_ttl;
        self.tokens.insert(
            token.clone(),
            Token {
                api_key: api_key.clone(),
                expires_at: expiration,
            },
        );
        self.issued.push(token.clone());
        Reply::json(
            200,
            json!({
                "access_token": token,
                "refresh_token": "not_supported",
                "ims_user_id": 1_180_090,
                "token_type": "Bearer",
                "expires_in": self.token_ttl,
                "expiration": expiration,
                "scope": scope
            }),
        )
    }

    // ---- Resource Controller -----------------------------------------------------------------

    /// Validates `Authorization: Bearer <token>`.
    pub(super) fn authenticate(
        &self,
        authorization: Option<&str>,
        txn: &str,
    ) -> Result<Caller, Reply> {
        let unauthorized =
            |message: &str| Reply::rc_error(401, "RC-IamErrorResponse", message, txn);
        let header =
            authorization.ok_or_else(|| unauthorized("Authorization header is missing"))?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(unauthorized("Authorization header is not a bearer token")),
        };
        let known = self
            .tokens
            .get(token)
            .ok_or_else(|| unauthorized("Token is invalid"))?;
        if known.expires_at <= now_unix() {
            return Err(unauthorized("Token is expired"));
        }
        self.callers
            .get(&known.api_key)
            .cloned()
            .ok_or_else(|| unauthorized("Token is invalid"))
    }
}
