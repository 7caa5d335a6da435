//! Resource Controller listings and reads of instances: filters, pages and their cursors.

use super::*;

impl World {
    pub(super) fn find_instance(&self, caller: &Caller, id: &str) -> Option<&Instance> {
        // Another account's instance is reported as not found: no existence oracle.
        self.instances
            .iter()
            .find(|i| i.account_id == caller.account_id && (i.guid == id || i.crn() == id))
    }

    fn page(&self, path: &str, items: Vec<Value>, cursor: &Cursor, limit: usize) -> Value {
        let end = (cursor.offset + limit).min(items.len());
        let resources: Vec<Value> = items
            .get(cursor.offset..end)
            .map(<[Value]>::to_vec)
            .unwrap_or_default();
        let next_url = (end < items.len()).then(|| {
            let next = Cursor {
                offset: end,
                ..cursor.clone()
            };
            let token: String = serde_json::to_vec(&next)
                .unwrap_or_default()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let relative = format!("{path}?start={token}&limit={limit}");
            if self.absolute_next_url {
                format!("{}{relative}", self.base_url)
            } else {
                relative
            }
        });
        json!({"rows_count": resources.len(), "next_url": next_url, "resources": resources})
    }

    /// Reads `start` (a page token carrying the filters) or the filters themselves, and `limit`.
    fn cursor(&self, query: &Query, txn: &str) -> Result<(Cursor, usize), Reply> {
        let limit = match query.get("limit") {
            None => self.page_size,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if n >= 1 => n.min(self.page_size),
                _ => {
                    return Err(Reply::rc_error(
                        400,
                        "RC-BadRequest",
                        format!("Invalid limit {l:?}"),
                        txn,
                    ));
                }
            },
        };
        let cursor = match query.get("start") {
            Some(start) => decode_cursor(start)
                .ok_or_else(|| Reply::rc_error(400, "RC-BadRequest", "Invalid start token", txn))?,
            None => Cursor {
                name: query.get("name").cloned(),
                guid: query.get("guid").cloned(),
                resource_group_id: query.get("resource_group_id").cloned(),
                state: query.get("state").cloned(),
                offset: 0,
            },
        };
        Ok((cursor, limit))
    }

    /// `GET /v2/resource_instances`.
    pub fn list_instances(
        &self,
        auth: Option<&str>,
        query: &Query,
        txn: &str,
    ) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let (cursor, limit) = self.cursor(query, txn)?;
        let items = self
            .instances
            .iter()
            .filter(|i| i.account_id == caller.account_id && cursor.names(&i.name, &i.guid))
            .filter(|i| {
                cursor
                    .resource_group_id
                    .as_ref()
                    .is_none_or(|g| &i.resource_group_id == g)
            })
            .filter(|i| match &cursor.state {
                Some(s) => &i.state == s,
                None => i.state == "active" || i.state == "provisioning",
            })
            .map(Instance::json)
            .collect();
        Ok(Reply::json(
            200,
            self.page("/v2/resource_instances", items, &cursor, limit),
        ))
    }

    /// `GET /v2/resource_instances/{id}`.
    pub fn get_instance(&self, auth: Option<&str>, id: &str, txn: &str) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let instance = self
            .find_instance(&caller, id)
            .ok_or_else(|| instance_not_found(id, txn))?;
        Ok(Reply::json(200, instance.json()))
    }

    /// `GET /v2/resource_instances/{id}/resource_keys` (any state, paged).
    pub fn list_instance_keys(
        &self,
        auth: Option<&str>,
        id: &str,
        query: &Query,
        txn: &str,
    ) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let instance = self
            .find_instance(&caller, id)
            .ok_or_else(|| instance_not_found(id, txn))?;
        let (cursor, limit) = self.cursor(query, txn)?;
        let items = self
            .keys
            .iter()
            .filter(|k| k.instance_guid == instance.guid)
            .map(|k| self.key_json(k, &caller))
            .collect();
        let path = format!("/v2/resource_instances/{}/resource_keys", instance.guid);
        Ok(Reply::json(200, self.page(&path, items, &cursor, limit)))
    }

    /// `GET /v2/resource_keys` (account-wide; `name` and `guid` filters).
    pub fn list_keys(&self, auth: Option<&str>, query: &Query, txn: &str) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let (cursor, limit) = self.cursor(query, txn)?;
        let items = self
            .keys
            .iter()
            .filter(|k| k.account_id == caller.account_id && cursor.names(&k.name, &k.guid))
            .map(|k| self.key_json(k, &caller))
            .collect();
        Ok(Reply::json(
            200,
            self.page("/v2/resource_keys", items, &cursor, limit),
        ))
    }
}

/// The query parameters of a request.
type Query = HashMap<String, String>;

impl Cursor {
    /// Whether an item passes the `name` and `guid` filters.
    fn names(&self, name: &str, guid: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.guid.as_deref().is_none_or(|g| g == guid)
    }
}

fn instance_not_found(id: &str, txn: &str) -> Reply {
    Reply::rc_error(
        404,
        "RC-NotFound",
        format!("Instance with id {id} not found"),
        txn,
    )
}

fn decode_cursor(token: &str) -> Option<Cursor> {
    if !token.len().is_multiple_of(2) || token.len() > 8192 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    serde_json::from_slice(&bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            name: Some("x y".into()),
            offset: 100,
            ..Cursor::default()
        };
        let token: String = serde_json::to_vec(&c)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let back = decode_cursor(&token).unwrap();
        assert_eq!(back.offset, 100);
        assert_eq!(back.name.as_deref(), Some("x y"));
        assert!(decode_cursor("zz").is_none());
    }
}
