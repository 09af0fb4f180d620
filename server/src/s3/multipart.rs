//! S3's multipart uploads, as the object writer ([`super::writer`]) uses them: start, a
//! part sent or copied inside the store, completion, and the listing and abort the sweep
//! uses for uploads a dead node left.

use bytes::Bytes;
use http::Method;

use super::{DigestBytes, S3, S3Error, checksum_header, error_in_200, sigv4, xml};

impl S3 {
    /// Starts a multipart upload to `key`; returns its upload id.
    pub fn create_multipart(
        &self,
        key: &str,
        metadata: &[(&str, &str)],
    ) -> Result<String, S3Error> {
        let headers = metadata
            .iter()
            .map(|(k, v)| (format!("x-amz-meta-{k}"), v.to_string()))
            .chain([("x-amz-checksum-algorithm".to_string(), "CRC32C".to_string())])
            .collect();
        let query = vec![("uploads".to_string(), String::new())];
        let a = self.call(Method::POST, key, query, headers, Vec::new(), None)?;
        xml::first(&String::from_utf8_lossy(&a.body), "UploadId")
            .ok_or_else(|| S3Error::transport("CreateMultipartUpload answered no UploadId"))
    }

    /// Uploads part `number` (1-based) of `upload_id`; returns its ETag and CRC32C.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Vec<Bytes>,
    ) -> Result<(String, String), S3Error> {
        let query = vec![
            ("partNumber".to_string(), number.to_string()),
            ("uploadId".to_string(), upload_id.to_string()),
        ];
        let headers = checksum_header(&body);
        let crc = headers[0].1.clone();
        let a = self.call(Method::PUT, key, query, headers, body, None)?;
        let etag = a
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| S3Error::transport("UploadPart answered no ETag"))?;
        Ok((etag.to_string(), crc))
    }

    /// Makes part `number` of `upload_id` from bytes `range` (inclusive) of the object at
    /// `source`, copied inside the store: the bytes do not pass through this node.
    /// `crc32c` is what the caller computed over those bytes (S3 computes its own and
    /// compares at completion); returns the part's ETag.
    pub fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source: &str,
        range: (u64, u64),
        crc32c: &str,
    ) -> Result<String, S3Error> {
        let query = vec![
            ("partNumber".to_string(), number.to_string()),
            ("uploadId".to_string(), upload_id.to_string()),
        ];
        let source_path = format!(
            "/{}/{}",
            self.inner.bucket,
            sigv4::uri_encode(source, false)
        );
        let headers = vec![
            ("x-amz-copy-source".to_string(), source_path),
            (
                "x-amz-copy-source-range".to_string(),
                format!("bytes={}-{}", range.0, range.1),
            ),
        ];
        let a = self.call(Method::PUT, key, query, headers, Vec::new(), None)?;
        let xml = error_in_200(&a.body)?;
        if let Some(theirs) = xml::first(&xml, "ChecksumCRC32C")
            && theirs != crc32c
        {
            return Err(S3Error {
                status: Some(200),
                code: "BadDigest".into(),
                message: format!("{source} copied with CRC32C {theirs}, read as {crc32c}"),
            });
        }
        xml::first(&xml, "ETag")
            .ok_or_else(|| S3Error::transport("UploadPartCopy answered no ETag"))
    }

    /// Completes `upload_id` from its `(number, etag, crc32c)` parts. `create_only`: fail
    /// with 412 if `key` exists.
    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String, String)],
        create_only: bool,
    ) -> Result<(), S3Error> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag, crc) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag>\
                 <ChecksumCRC32C>{crc}</ChecksumCRC32C></Part>",
                xml::escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let body = Bytes::from(body);
        let sha: [u8; 32] = sha2::Sha256::digest_bytes(&body);
        let mut headers = Vec::new();
        if create_only {
            headers.push(("if-none-match".to_string(), "*".to_string()));
        }
        let query = vec![("uploadId".to_string(), upload_id.to_string())];
        let a = self.call(Method::POST, key, query, headers, vec![body], Some(sha))?;
        error_in_200(&a.body).map(drop)
    }

    /// Multipart uploads started under `prefix` and neither completed nor aborted:
    /// (key, upload id, when initiated), at most 1000.
    pub fn multipart_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, String)>, S3Error> {
        let query = vec![
            ("uploads".to_string(), String::new()),
            ("prefix".to_string(), prefix.to_string()),
        ];
        let a = self.call(Method::GET, "", query, Vec::new(), Vec::new(), None)?;
        Ok(parse_uploads(&String::from_utf8_lossy(&a.body)))
    }

    /// Drops `upload_id` and its parts.
    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let query = vec![("uploadId".to_string(), upload_id.to_string())];
        match self.call(Method::DELETE, key, query, Vec::new(), Vec::new(), None) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The uploads of a ListMultipartUploads answer.
fn parse_uploads(xml: &str) -> Vec<(String, String, String)> {
    xml::blocks(xml, "Upload")
        .into_iter()
        .filter_map(|u| {
            Some((
                xml::first(u, "Key")?,
                xml::first(u, "UploadId")?,
                xml::first(u, "Initiated")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_uploads_in_progress() {
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket>\
            <Upload><Key>p/objects/a.bin</Key><UploadId>u1</UploadId>\
            <Initiated>2026-12-03T07:00:00.000Z</Initiated></Upload>\
            <Upload><Key>p/objects/b.bin</Key><UploadId>u2</UploadId></Upload>\
            </ListMultipartUploadsResult>";
        assert_eq!(
            parse_uploads(xml),
            [(
                "p/objects/a.bin".to_string(),
                "u1".to_string(),
                "2026-12-03T07:00:00.000Z".to_string()
            )]
        );
    }
}
