//! Reading issued certificates.

use crate::error::CaError;
use crate::store::{CertFilter, CertRecord};

use super::{Authority, blocking, store_err};

impl Authority {
    /// One certificate by serial.
    pub async fn certificate(&self, serial: &str) -> Result<CertRecord, CaError> {
        let store = self.store.clone();
        let s = serial.to_string();
        blocking(move || store.certificate(&s).map_err(store_err))
            .await?
            .ok_or_else(|| CaError::NotFound {
                what: "certificate",
                id: serial.to_string(),
            })
    }

    /// A page of certificates matching `filter`, ordered by serial; returns the page and the
    /// token of the next one (empty at the end).
    pub async fn list_certificates(
        &self,
        filter: CertFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<CertRecord>, String), CaError> {
        let limits = &self.policy.limits;
        let size = limits.effective_page_size(page_size) as usize;
        let after = if page_token.is_empty() {
            None
        } else {
            if page_token.len() > 40 || !page_token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CaError::invalid("page_token", "not a token from this API"));
            }
            Some(page_token.to_string())
        };
        let store = self.store.clone();
        let mut page = blocking(move || {
            store
                .list_certificates(&filter, after.as_deref(), size + 1)
                .map_err(store_err)
        })
        .await?;
        let next = if page.len() > size {
            page.truncate(size);
            page.last().map(|c| c.serial.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }
}
