//! Temporary credentials from STS: a web identity token exchanged for a role's keys
//! (`AssumeRoleWithWebIdentity`, unsigned: the token is the proof), or a role assumed with
//! another profile's keys (`AssumeRole`, signed with them).

use bytes::Bytes;
use http::Method;
use sha2::{Digest, Sha256};

use super::S3Error;
use super::connection::Connections;
use super::credentials::{Endpoint, FETCH_TIMEOUT, Fetched, fetched, malformed, send};
use super::sigv4::{self, Credentials};

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// The role a node asks STS for.
pub struct Role<'a> {
    pub arn: &'a str,
    pub session_name: &'a str,
    /// What the role's trust policy may require of whoever assumes it.
    pub external_id: Option<&'a str>,
}

/// `AssumeRoleWithWebIdentity`: `token` (a Kubernetes service account's) for the role's keys.
pub async fn with_web_identity(
    conns: &Connections,
    sts: &Endpoint,
    role_arn: &str,
    session_name: &str,
    token: &str,
) -> Result<Fetched, S3Error> {
    let form = format!(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}\
         &RoleSessionName={}&WebIdentityToken={}",
        enc(role_arn),
        enc(session_name),
        enc(token)
    );
    call(conns, sts, form, Vec::new()).await
}

/// `AssumeRole`, signed (SigV4, service `sts`) with `source`'s keys.
pub async fn assume_role(
    conns: &Connections,
    sts: &Endpoint,
    region: &str,
    source: &Credentials,
    role: &Role<'_>,
) -> Result<Fetched, S3Error> {
    let mut form = format!(
        "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName={}",
        enc(role.arn),
        enc(role.session_name)
    );
    if let Some(id) = role.external_id {
        form.push_str(&format!("&ExternalId={}", enc(id)));
    }
    let amz_date = sigv4::amz_date(super::now_secs());
    let mut signed = vec![
        ("content-type".to_string(), FORM.to_string()),
        ("host".to_string(), conns.authority.clone()),
        ("x-amz-date".to_string(), amz_date.clone()),
    ];
    if let Some(token) = &source.session_token {
        signed.push(("x-amz-security-token".to_string(), token.clone()));
    }
    let payload_hash = hex::encode(Sha256::digest(form.as_bytes()));
    let auth = sigv4::authorization_for(
        "sts",
        source,
        region,
        &amz_date,
        &sigv4::Signable {
            method: "POST",
            path: &sts.path,
            query: &[],
            headers: &signed,
            payload_hash: &payload_hash,
        },
    );
    let mut headers: Vec<(&str, String)> = vec![("authorization", auth), ("x-amz-date", amz_date)];
    if let Some(token) = &source.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    call(conns, sts, form, headers).await
}

fn enc(s: &str) -> String {
    sigv4::uri_encode(s, true)
}

/// POSTs `form` to STS: the credentials in its answer, or its error.
async fn call(
    conns: &Connections,
    sts: &Endpoint,
    form: String,
    mut headers: Vec<(&str, String)>,
) -> Result<Fetched, S3Error> {
    headers.push(("content-type", FORM.to_string()));
    let (status, _, body) = send(
        conns,
        Method::POST,
        &sts.path,
        &headers,
        Bytes::from(form),
        FETCH_TIMEOUT,
    )
    .await?;
    let text = String::from_utf8_lossy(&body);
    match status {
        200 => parse_sts(&text),
        _ => Err(S3Error {
            status: Some(status),
            code: super::xml::first(&text, "Code").unwrap_or(format!("Http{status}")),
            message: super::xml::first(&text, "Message").unwrap_or_default(),
        }),
    }
}

/// Credentials from an `AssumeRole` or `AssumeRoleWithWebIdentity` answer.
pub fn parse_sts(xml: &str) -> Result<Fetched, S3Error> {
    let block = super::xml::blocks(xml, "Credentials")
        .into_iter()
        .next()
        .ok_or_else(|| malformed("Credentials"))?;
    let field = |tag: &str| super::xml::first(block, tag).ok_or_else(|| malformed(tag));
    fetched(
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        Some(field("SessionToken")?),
        &field("Expiration")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_sts_answer() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>\
            <Credentials><AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>s/e+c</SecretAccessKey>\
            <SessionToken>tok&amp;en</SessionToken>\
            <Expiration>2026-12-03T10:03:39.871883Z</Expiration></Credentials>\
            </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let f = parse_sts(xml).unwrap();
        assert_eq!(f.credentials.access_key_id, "ASIAX");
        assert_eq!(f.credentials.secret_access_key.as_str(), "s/e+c");
        assert_eq!(f.credentials.session_token.as_deref(), Some("tok&en"));
        assert_eq!(f.expires, Some(1_796_292_219));
        let no_token = xml.replace("<SessionToken>tok&amp;en</SessionToken>", "");
        assert_eq!(
            parse_sts(&no_token).err().unwrap().code,
            "MalformedCredentials"
        );
    }
}
