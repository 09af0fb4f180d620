//! Just enough DER to read what the certificate checks need ([`super::ct`],
//! [`super::ocsp`], [`super::pin`]) from certificates and OCSP responses the server
//! sends: every read is bounds-checked, and anything malformed is an error, never a
//! panic.

/// One DER element: its tag, its whole encoding and its contents.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub whole: &'a [u8],
    pub contents: &'a [u8],
}

/// Splits the first DER element off `input`.
pub fn tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let bad = || "malformed DER".to_string();
    let tag = *input.first().ok_or_else(bad)?;
    let first = *input.get(1).ok_or_else(bad)?;
    let (len, header) = match first {
        0..=0x7f => (usize::from(first), 2),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let bytes = input.get(2..2 + n).ok_or_else(bad)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, 2 + n)
        }
        _ => return Err(bad()),
    };
    let end = header.checked_add(len).ok_or_else(bad)?;
    let whole = input.get(..end).ok_or_else(bad)?;
    Ok((
        Tlv {
            tag,
            whole,
            contents: &whole[header..],
        },
        &input[end..],
    ))
}

/// The elements of a constructed value's contents, in order.
pub fn children(mut contents: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (t, rest) = tlv(contents)?;
        out.push(t);
        contents = rest;
    }
    Ok(out)
}

/// Encodes one element.
pub fn encode(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// The fields of a certificate's TBSCertificate, the optional `[0]` version skipped:
/// serial, signature, issuer, validity, subject, subjectPublicKeyInfo, then extensions.
pub fn tbs_fields(cert: &[u8]) -> Result<(Tlv<'_>, Vec<Tlv<'_>>), String> {
    let (certificate, _) = tlv(cert)?;
    let (tbs, _) = tlv(certificate.contents)?;
    let mut fields = children(tbs.contents)?;
    if fields.first().is_some_and(|f| f.tag == 0xa0) {
        fields.remove(0);
    }
    if fields.len() < 6 {
        return Err("a certificate with too few fields".into());
    }
    Ok((tbs, fields))
}

/// The SubjectPublicKeyInfo DER of a certificate.
pub fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    tbs_fields(cert).ok().map(|(_, f)| f[5].whole)
}

/// The serial number's content bytes of a certificate.
pub fn serial_of(cert: &[u8]) -> Option<&[u8]> {
    tbs_fields(cert).ok().map(|(_, f)| f[0].contents)
}

/// The key bits of a SubjectPublicKeyInfo (what ring verifies with).
pub fn spki_key_bits(spki: &[u8]) -> Option<&[u8]> {
    let (seq, _) = tlv(spki).ok()?;
    let (_alg, rest) = tlv(seq.contents).ok()?;
    let (bits, _) = tlv(rest).ok()?;
    // BIT STRING: the first content byte counts unused bits (0 for keys).
    (bits.tag == 0x03 && bits.contents.first() == Some(&0)).then(|| &bits.contents[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_short_and_long_form() {
        for n in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let enc = encode(0x04, &vec![7u8; n]);
            let (t, rest) = tlv(&enc).unwrap();
            assert_eq!((t.tag, t.contents.len(), rest.len()), (0x04, n, 0));
        }
        assert_eq!(encode(0x04, &[0; 294])[..4], [0x04, 0x82, 0x01, 0x26]);
        assert!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err(), "5-byte lengths");
        assert!(tlv(&[0x30, 0x05, 1]).is_err(), "cut short");
        assert!(tlv(&[0x30]).is_err());
    }

    #[test]
    fn a_certificates_key_and_serial_are_found() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x12, 0x34]));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            spki_of(cert.der()),
            Some(&rcgen::PublicKeyData::subject_public_key_info(&key)[..])
        );
        assert_eq!(serial_of(cert.der()), Some(&[0x12, 0x34][..]));
        assert!(spki_of(b"\x30\x03\x30\x01\x00").is_none());
    }
}
