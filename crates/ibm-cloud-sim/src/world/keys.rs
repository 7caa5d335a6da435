//! Resource Controller keys: create, read, delete, and what their credentials show a caller.

use super::*;

impl World {
    /// `POST /v2/resource_keys` with `{name, source, role}`.
    pub fn create_key(
        &mut self,
        auth: Option<&str>,
        body: &[u8],
        txn: &str,
    ) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
            return Err(bad_request("Request body is not a JSON object", txn));
        };
        let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
        let Some(name) = field("name") else {
            return Err(bad_request("Missing required property 'name'", txn));
        };
        if !valid_key_name(&name) {
            return Err(bad_request(
                "Invalid name: it must be 180 characters or less and cannot include any special characters other than (space) - . _ :",
                txn,
            ));
        }
        let Some(source) = field("source") else {
            return Err(bad_request("Missing required property 'source'", txn));
        };
        let requested_role = field("role");
        if caller.platform_role < PlatformRole::Operator {
            return Err(Reply::rc_error(
                403,
                "RC-IamErrorResponse",
                format!(
                    "The API key {:?} is not authorized to create resource keys (platform role Operator or higher required)",
                    caller.name
                ),
                txn,
            ));
        }
        let Some(instance) = self.find_instance(&caller, &source) else {
            return Err(Reply::rc_error(
                404,
                "RC-NotFound",
                format!("Source resource with id {source} not found"),
                txn,
            ));
        };
        if instance.state != "active" {
            return Err(bad_request(
                format!(
                    "Instance {} is not active (state {})",
                    instance.guid, instance.state
                ),
                txn,
            ));
        }
        // What IBM accepts: a base role name, or a role CRN: IAM's base service roles, or a role
        // of the instance's own service (Cloud Logs' Sender). Anything else is a 400.
        let (role, role_crn) = match requested_role.as_deref() {
            None => (ServiceRole::Writer, ServiceRole::Writer.crn().to_owned()),
            Some(r) => match ServiceRole::parse_for_service(r, &instance.service) {
                Some(parsed) => parsed,
                None => {
                    return Err(bad_request(format!("Invalid role {r:?}"), txn));
                }
            },
        };
        let instance_guid = instance.guid.clone();
        let onetime = instance.onetime_credentials;
        let key = Key {
            guid: self.new_guid(),
            name,
            instance_guid,
            role,
            role_crn,
            state: "active".to_owned(),
            account_id: caller.account_id.clone(),
            apikey: self.new_api_key(),
            serviceid: format!("ServiceId-{}", self.new_guid()),
            created_at: rfc3339(now_unix()),
            deleted_at: None,
            onetime,
        };
        tracing::info!(key = %key.guid, instance = %key.instance_guid, role = key.role.as_str(), "simulator: resource key created");
        let reply = Reply::json(201, self.key_json_revealing(&key, &caller, true));
        self.keys.push(key);
        Ok(reply)
    }

    fn find_key(&self, caller: &Caller, id: &str) -> Option<usize> {
        self.keys.iter().position(|k| {
            k.account_id == caller.account_id && (k.guid == id || self.key_crn(k) == id)
        })
    }

    /// `GET /v2/resource_keys/{id}`: removed keys are still returned, with state `removed`.
    pub fn get_key(&self, auth: Option<&str>, id: &str, txn: &str) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let index = self
            .find_key(&caller, id)
            .ok_or_else(|| key_not_found(id, txn))?;
        Ok(Reply::json(200, self.key_json(&self.keys[index], &caller)))
    }

    /// `PATCH /v2/resource_keys/{id}` with `{name}`: renames the key (200 with the key); the
    /// same rules as creation for the name and the caller's platform role (Operator or higher).
    pub fn rename_key(
        &mut self,
        auth: Option<&str>,
        id: &str,
        body: &[u8],
        txn: &str,
    ) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let index = self.changeable_key(&caller, id, "update", txn)?;
        let body: Value = serde_json::from_slice(body)
            .map_err(|_| bad_request("The request body is not valid JSON", txn))?;
        let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_owned) else {
            return Err(bad_request("Missing required property 'name'", txn));
        };
        if !valid_key_name(&name) {
            return Err(bad_request(
                "Invalid name: it must be 180 characters or less and cannot include any special characters other than (space) - . _ :",
                txn,
            ));
        }
        let key = &mut self.keys[index];
        key.name = name;
        tracing::info!(key = %key.guid, "simulator: resource key renamed");
        Ok(Reply::json(200, self.key_json(&self.keys[index], &caller)))
    }

    /// The index of key `id` when `caller` may `verb` it (update, delete): it exists (404), the
    /// caller's platform role is Operator or higher (403), and it is not removed (410).
    fn changeable_key(
        &self,
        caller: &Caller,
        id: &str,
        verb: &str,
        txn: &str,
    ) -> Result<usize, Reply> {
        let index = self
            .find_key(caller, id)
            .ok_or_else(|| key_not_found(id, txn))?;
        if caller.platform_role < PlatformRole::Operator {
            return Err(Reply::rc_error(
                403,
                "RC-IamErrorResponse",
                format!(
                    "Not authorized to {verb} resource keys (platform role Operator or higher required)"
                ),
                txn,
            ));
        }
        if self.keys[index].state == "removed" {
            return Err(Reply::rc_error(
                410,
                "RC-Gone",
                "The resource was valid but was removed in a previous call",
                txn,
            ));
        }
        Ok(index)
    }

    /// `DELETE /v2/resource_keys/{id}`: 204, then 410 for a removed key, 404 for an unknown one.
    pub fn delete_key(&mut self, auth: Option<&str>, id: &str, txn: &str) -> Result<Reply, Reply> {
        let caller = self.authenticate(auth, txn)?;
        let index = self.changeable_key(&caller, id, "delete", txn)?;
        let key = &mut self.keys[index];
        key.state = "removed".to_owned();
        key.deleted_at = Some(rfc3339(now_unix()));
        tracing::info!(key = %key.guid, "simulator: resource key deleted");
        Ok(Reply::empty(204))
    }

    pub(super) fn key_crn(&self, key: &Key) -> String {
        let instance = self.instances.iter().find(|i| i.guid == key.instance_guid);
        let (service, region) = instance
            .map(|i| (i.service.as_str(), i.region.as_str()))
            .unwrap_or(("unknown", "global"));
        format!(
            "crn:v1:bluemix:public:{service}:{region}:a/{}:{}:resource-key:{}",
            key.account_id, key.instance_guid, key.guid
        )
    }

    /// Credentials as the caller may see them: redacted when the caller's service role is lower
    /// than the key's; for logdna/logdnaat the instance's *current* ingestion key.
    fn credentials(&self, key: &Key, caller: &Caller) -> Value {
        if key.state == "removed" {
            return json!({});
        }
        if caller.service_role < key.role {
            return json!({"REDACTED": "REDACTED"});
        }
        let mut creds = Map::new();
        let instance = self.instances.iter().find(|i| i.guid == key.instance_guid);
        let instance_crn = instance.map(Instance::crn).unwrap_or_default();
        if let Some(i) = instance {
            if let Some(ingestion) = &i.ingestion_key {
                creds.insert("ingestion_key".into(), json!(ingestion));
            }
            if let Some(service_key) = &i.service_key {
                creds.insert("service_key".into(), json!(service_key));
            }
        }
        creds.insert("apikey".into(), json!(key.apikey));
        creds.insert(
            "iam_apikey_description".into(),
            json!(format!(
                "Auto generated apikey during resource-key operation for Instance - {instance_crn}"
            )),
        );
        creds.insert(
            "iam_apikey_name".into(),
            json!(format!("auto-generated-apikey-{}", key.guid)),
        );
        creds.insert("iam_role_crn".into(), json!(key.role_crn));
        creds.insert(
            "iam_serviceid_crn".into(),
            json!(format!(
                "crn:v1:bluemix:public:iam-identity::a/{}::serviceid:{}",
                key.account_id, key.serviceid
            )),
        );
        creds.insert("resource_instance_id".into(), json!(instance_crn));
        Value::Object(creds)
    }

    pub(super) fn key_json(&self, key: &Key, caller: &Caller) -> Value {
        self.key_json_revealing(key, caller, false)
    }

    /// `reveal`: the creation response, the only one showing one-time credentials.
    fn key_json_revealing(&self, key: &Key, caller: &Caller, reveal: bool) -> Value {
        let crn = self.key_crn(key);
        let instance = self.instances.iter().find(|i| i.guid == key.instance_guid);
        json!({
            "id": crn,
            "guid": key.guid,
            "url": format!("/v2/resource_keys/{}", key.guid),
            "created_at": key.created_at,
            "updated_at": key.deleted_at.as_ref().unwrap_or(&key.created_at),
            "deleted_at": key.deleted_at,
            "created_by": "IBMid-simulator",
            "source_crn": instance.map(Instance::crn),
            "name": key.name,
            "crn": crn,
            "state": key.state,
            "account_id": key.account_id,
            "resource_group_id": instance.map(|i| i.resource_group_id.clone()),
            "resource_id": instance.map(|i| format!("{}-service-id", i.service)),
            "onetime_credentials": key.onetime,
            "credentials": if key.onetime && !reveal {
                json!({"REDACTED": "REDACTED"})
            } else {
                self.credentials(key, caller)
            },
            "iam_compatible": true,
            "migrated": false,
            "resource_instance_url": format!("/v2/resource_instances/{}", key.instance_guid),
            "resource_alias_url": null
        })
    }
}

fn key_not_found(id: &str, txn: &str) -> Reply {
    Reply::rc_error(
        404,
        "RC-NotFound",
        format!("Resource key with id {id} not found"),
        txn,
    )
}

fn bad_request(message: impl Into<String>, txn: &str) -> Reply {
    Reply::rc_error(400, "RC-BadRequest", message, txn)
}
