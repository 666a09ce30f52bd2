//! The DynamoDB client side against a real DynamoDB implementation: dynalite on loopback
//! (started per test; see tests/common/dynamo.rs), with a fault proxy in front where DynamoDB's
//! answers under load are needed. No mock of the SDK client.

// Only the DynamoDB harness, not all of tests/common (which every other test binary builds).
#[path = "common/dynamo.rs"]
mod dynamo_harness;

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, Select,
};
use dynamo_harness::{Dynalite, Fault, FaultProxy, dynamo, dynamo_config};
use rc_audit_hec::dynamodb::{
    DynamoError, Item, ItemError, WriteOutcome, build, create_table, verify,
};
use rc_audit_hec::transform::hec_time;

/// A record as RingCentral sends it, in the HEC envelope the spool stores.
fn envelope(id: &str, time_ms: i64, action: &str) -> Vec<u8> {
    let time = rc_audit_hec::time::ms_rfc3339(time_ms).unwrap();
    format!(
        r#"{{"time":{},"host":"h","source":"ringcentral:audit-trail:main","sourcetype":"ringcentral:audit","event":{{"id":"{id}","eventTime":"{time}","actionId":"{action}","eventType":"UPDATE","initiator":{{"extensionId":"1","name":"Alice"}},"target":{{"objectId":"2","name":"Bob"}},"clientIp":"10.0.0.1"}}}}"#,
        hec_time(time_ms)
    )
    .into_bytes()
}

/// 2026-11-30T22:00:00.000Z.
const T0: i64 = 1_796_076_000_000;

fn items(account: &str, n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let action = if i % 2 == 0 {
                "LOGIN_FAILED"
            } else {
                "CHANGE_USER_INFO"
            };
            build(
                account,
                &format!("{account}-{i}"),
                &envelope(&format!("{account}-{i}"), T0 + i as i64 * 1000, action),
                None,
            )
            .unwrap()
        })
        .collect()
}

async fn count(d: &rc_audit_hec::dynamodb::Dynamo) -> i32 {
    d.sdk()
        .scan()
        .table_name(d.table())
        .select(Select::Count)
        .send()
        .await
        .unwrap()
        .count()
}

/// A fresh table "audit" on a fresh dynalite, through `url` when given (a proxy).
async fn table(db: &Dynalite) -> rc_audit_hec::dynamodb::Dynamo {
    let cfg = dynamo_config(&db.url(), "audit");
    let d = dynamo(&cfg).await;
    create_table(&d, &cfg).await.expect("create-table");
    d
}

#[tokio::test]
async fn create_table_then_verify_and_create_twice_is_fine() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let cfg = dynamo_config(&db.url(), "audit");
    let d = dynamo(&cfg).await;
    let first = create_table(&d, &cfg).await.expect("create-table");
    assert!(first.created);
    assert_eq!(first.status, "ACTIVE");
    assert_eq!(first.index_projection, "ALL");
    let again = create_table(&d, &cfg).await.expect("create-table again");
    assert!(!again.created);
    let report = verify(&d, &cfg).await.expect("verify");
    assert_eq!(report.status, "ACTIVE");
    assert!(report.to_string().contains("index byAction"), "{report}");

    // create_table = false: refused, even though the table exists.
    let managed = rc_audit_hec::config::DynamoDbConfig {
        create_table: false,
        ..cfg.clone()
    };
    assert!(matches!(
        create_table(&d, &managed).await,
        Err(DynamoError::CreateRefused { .. })
    ));

    // dynamodb.ttl set but TTL off on the table (dynalite has no UpdateTimeToLive): verify
    // says so and names the fix.
    let with_ttl = rc_audit_hec::config::DynamoDbConfig {
        ttl: Some(std::time::Duration::from_secs(400 * 86_400)),
        ..cfg
    };
    let err = verify(&d, &with_ttl).await.unwrap_err();
    assert!(matches!(err, DynamoError::Ttl { .. }), "{err}");
    assert!(err.to_string().contains("update-time-to-live"), "{err}");
}

#[tokio::test]
async fn create_table_turns_ttl_on_once_and_verify_checks_its_attribute() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let proxy = FaultProxy::start(&db.url()).await;
    proxy.emulate_ttl();
    let cfg = rc_audit_hec::config::DynamoDbConfig {
        ttl: Some(std::time::Duration::from_secs(400 * 86_400)),
        ..dynamo_config(&proxy.url(), "audit")
    };
    let d = dynamo(&cfg).await;
    let first = create_table(&d, &cfg).await.expect("create-table");
    assert!(first.created && first.ttl_enabled_now, "{first:?}");
    assert_eq!(first.ttl_attribute.as_deref(), Some("expiresAt"));
    let again = create_table(&d, &cfg).await.expect("create-table again");
    assert!(!again.created && !again.ttl_enabled_now, "{again:?}");
    assert_eq!(
        verify(&d, &cfg).await.unwrap().ttl_attribute.as_deref(),
        Some("expiresAt")
    );
    let updates = proxy
        .seen()
        .iter()
        .filter(|(op, _)| op == "UpdateTimeToLive")
        .count();
    assert_eq!(updates, 1);
    // Items carry the attribute; DynamoDB takes them.
    let item = build("main", "r", &envelope("r", T0, "A"), cfg.ttl).unwrap();
    assert!(item.attributes().contains_key("expiresAt"));
    assert_eq!(d.put_one(&item).await, WriteOutcome::Written);

    // TTL on another attribute (someone else's setting): named, not overwritten.
    d.sdk()
        .update_time_to_live()
        .table_name("audit")
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("purgeAt")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    for err in [
        verify(&d, &cfg).await.unwrap_err(),
        create_table(&d, &cfg).await.unwrap_err(),
    ] {
        assert!(matches!(err, DynamoError::Ttl { .. }), "{err}");
        assert!(err.to_string().contains("\"purgeAt\""), "{err}");
    }
}

#[tokio::test]
async fn verify_names_a_missing_table_and_a_wrong_key_schema() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let cfg = dynamo_config(&db.url(), "nowhere");
    let d = dynamo(&cfg).await;
    let err = verify(&d, &cfg).await.unwrap_err();
    assert!(matches!(err, DynamoError::TableMissing { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("\"nowhere\"") && text.contains("us-east-1"),
        "{text}"
    );
    assert!(text.contains("dynamodb create-table"), "{text}");

    // A table keyed `id` only, made by someone else.
    d.sdk()
        .create_table()
        .table_name("other")
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let cfg = dynamo_config(&db.url(), "other");
    let d = dynamo(&cfg).await;
    // Wait for it to be ACTIVE as create-table would (dynalite takes a moment).
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let err = verify(&d, &cfg).await.unwrap_err();
    assert!(matches!(err, DynamoError::Schema { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("id (HASH)") && text.contains("account (S, HASH)"),
        "{text}"
    );
    // create-table refuses to adopt it too.
    assert!(matches!(
        create_table(&d, &cfg).await,
        Err(DynamoError::Schema { .. })
    ));
}

#[tokio::test]
async fn writes_are_idempotent_the_same_batch_twice_is_the_same_items() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let d = table(&db).await;
    let batch = items("main", 25);
    assert_eq!(d.write_batch(&batch).await, WriteOutcome::Written);
    assert_eq!(count(&d).await, 25);
    // A resend (after a timeout, a crash): the same 25 items, not 50.
    assert_eq!(d.write_batch(&batch).await, WriteOutcome::Written);
    assert_eq!(d.write_batch(&batch[3..9]).await, WriteOutcome::Written);
    assert_eq!(d.put_one(&batch[0]).await, WriteOutcome::Written);
    assert_eq!(count(&d).await, 25);
    // And each item is exactly what was built (read back by key).
    let got = d
        .sdk()
        .get_item()
        .table_name("audit")
        .key("account", AttributeValue::S("main".into()))
        .key(
            "sk",
            AttributeValue::S("2026-11-30T22:00:07.000Z#main-7".into()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(got.item(), Some(batch[7].attributes()));
}

#[tokio::test]
async fn unprocessed_items_come_back_with_their_indexes_and_resending_them_completes_the_set() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let d = table(&db).await;
    let proxy = FaultProxy::start(&db.url()).await;
    let via = dynamo(&dynamo_config(&proxy.url(), "audit")).await;
    let batch = items("main", 10);
    proxy.push(
        "BatchWriteItem",
        Fault::Partial {
            apply: vec![0, 2, 3, 7],
        },
    );
    let out = via.write_batch(&batch).await;
    assert_eq!(out, WriteOutcome::Unprocessed(vec![1, 4, 5, 6, 8, 9]));
    assert_eq!(count(&d).await, 4);
    // The sink resends only those (after backoff); one of them is left over again.
    let WriteOutcome::Unprocessed(left) = out else {
        unreachable!()
    };
    let resend: Vec<Item> = left.iter().map(|&i| batch[i].clone()).collect();
    proxy.push(
        "BatchWriteItem",
        Fault::Partial {
            apply: vec![0, 1, 2, 3, 4],
        },
    );
    assert_eq!(
        via.write_batch(&resend).await,
        WriteOutcome::Unprocessed(vec![5])
    );
    assert_eq!(via.write_batch(&resend[5..]).await, WriteOutcome::Written);
    assert_eq!(count(&d).await, 10);
    // The proxy forwarded each of the three requests once.
    let writes = proxy
        .seen()
        .iter()
        .filter(|(op, _)| op == "BatchWriteItem")
        .count();
    assert_eq!(writes, 3);
}

#[tokio::test]
async fn throttling_and_500_classify_as_retry_and_the_same_batch_then_goes_through() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let d = table(&db).await;
    let proxy = FaultProxy::start(&db.url()).await;
    let via = dynamo(&dynamo_config(&proxy.url(), "audit")).await;
    let batch = items("main", 5);
    for fault in [Fault::throttle(), Fault::throttling(), Fault::internal()] {
        let Fault::Error { code, .. } = fault.clone() else {
            unreachable!()
        };
        proxy.push("BatchWriteItem", fault);
        match via.write_batch(&batch).await {
            WriteOutcome::Retry {
                reason,
                retry_after,
            } => {
                assert!(reason.contains(code), "{reason}");
                assert_eq!(retry_after, None);
            }
            other => panic!("{code}: {other:?}"),
        }
        proxy.push("PutItem", Fault::throttle());
        assert!(matches!(
            via.put_one(&batch[0]).await,
            WriteOutcome::Retry { .. }
        ));
    }
    // One attempt per call: the SDK's own retries are off (3 batches, 3 puts, nothing more).
    assert_eq!(proxy.seen().len(), 6);
    assert_eq!(count(&d).await, 0);
    assert_eq!(via.write_batch(&batch).await, WriteOutcome::Written);
    assert_eq!(count(&d).await, 5);
}

#[tokio::test]
async fn a_missing_table_pauses_and_an_unreachable_endpoint_retries() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let cfg = dynamo_config(&db.url(), "missing");
    let d = dynamo(&cfg).await;
    let batch = items("main", 3);
    for out in [d.write_batch(&batch).await, d.put_one(&batch[0]).await] {
        match out {
            WriteOutcome::Pause { reason } => {
                assert!(reason.contains("\"missing\""), "{reason}");
                assert!(reason.contains("ResourceNotFoundException"), "{reason}");
                assert!(reason.contains("create-table"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Nothing listening: a network problem, retried (not a pause, not data loss).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = dynamo(&dynamo_config(&format!("http://127.0.0.1:{port}"), "audit")).await;
    assert!(matches!(
        gone.write_batch(&batch).await,
        WriteOutcome::Retry { .. }
    ));
}

/// A credential chain that finds nothing (no environment, no profile, no role).
#[derive(Debug)]
struct NoCredentials;

impl aws_sdk_dynamodb::config::ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            ),
        ))
    }
}

#[tokio::test]
async fn no_credentials_and_rejected_credentials_pause() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let _ = table(&db).await;
    let proxy = FaultProxy::start(&db.url()).await;
    let cfg = dynamo_config(&proxy.url(), "audit");
    let batch = items("main", 2);
    let none = rc_audit_hec::dynamodb::connect_with(&cfg, Some(NoCredentials))
        .await
        .unwrap();
    match none.write_batch(&batch).await {
        WriteOutcome::Pause { reason } => assert!(reason.contains("credentials"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Nothing was sent without credentials.
    assert!(proxy.seen().is_empty());
    // Credentials DynamoDB does not know, or expired ones.
    let d = dynamo(&cfg).await;
    for code in [
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "AccessDeniedException",
    ] {
        proxy.push(
            "BatchWriteItem",
            Fault::Error {
                status: 400,
                code,
                message: "The security token included in the request is invalid.",
            },
        );
        match d.write_batch(&batch).await {
            WriteOutcome::Pause { reason } => assert!(reason.contains(code), "{reason}"),
            other => panic!("{code}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_batch_is_invalid_and_put_one_isolates_the_item() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let d = table(&db).await;
    // The same key twice in one batch: DynamoDB rejects the whole batch (ValidationException).
    let mut batch = items("main", 3);
    batch.push(batch[1].clone());
    match d.write_batch(&batch).await {
        WriteOutcome::Invalid { reason } => {
            assert!(reason.contains("ValidationException"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&d).await, 0);
    for item in &batch {
        assert_eq!(d.put_one(item).await, WriteOutcome::Written);
    }
    assert_eq!(count(&d).await, 3);
}

#[tokio::test]
async fn an_oversized_record_is_too_large_and_the_largest_accepted_one_is_written() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let d = table(&db).await;
    // Pseudo-random hex: gzip gets it to about half.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from_digit((x % 16) as u32, 16).unwrap()
            })
            .collect()
    };
    let record = |pad: &str| {
        format!(r#"{{"time":1796076000.000,"event":{{"id":"big","actionId":"A","pad":"{pad}"}}}}"#)
            .into_bytes()
    };
    let huge = record(&noise(900 * 1024));
    match build("main", "big", &huge, None) {
        Err(ItemError::TooLarge { size, limit, .. }) => assert!(size > limit),
        other => panic!("{:?}", other.map(|i| i.size())),
    }
    // About 360 KB compressed: under the limit by our count, and DynamoDB agrees.
    let large = build("main", "big", &record(&noise(720 * 1024)), None).unwrap();
    assert!(
        large.size() > 300 * 1024 && large.size() < 400 * 1024,
        "{}",
        large.size()
    );
    assert_eq!(d.put_one(&large).await, WriteOutcome::Written);
    assert_eq!(
        d.write_batch(std::slice::from_ref(&large)).await,
        WriteOutcome::Written
    );
    assert_eq!(count(&d).await, 1);
}

/// The README's AWS CLI queries, run through the SDK:
/// by account and time range (the table), by `actionId` and time range (the `byAction` index).
#[tokio::test]
async fn queries_by_account_and_time_and_by_action_through_the_index() {
    let Some(db) = Dynalite::start().await else {
        return;
    };
    let d = table(&db).await;
    // main: 20 records a second apart from T0, LOGIN_FAILED on even ones; other: 6 records.
    assert_eq!(
        d.write_batch(&items("main", 20)).await,
        WriteOutcome::Written
    );
    assert_eq!(
        d.write_batch(&items("other", 6)).await,
        WriteOutcome::Written
    );
    // A record without actionId: in the table, not in the index.
    let quiet = br#"{"time":1796076005.500,"event":{"id":"q"}}"#;
    assert_eq!(
        d.put_one(&build("main", "q", quiet, None).unwrap()).await,
        WriteOutcome::Written
    );

    let s = |v: &str| AttributeValue::S(v.to_owned());
    let ids = |items: &[std::collections::HashMap<String, AttributeValue>]| -> BTreeSet<String> {
        items
            .iter()
            .map(|i| {
                i["sk"]
                    .as_s()
                    .unwrap()
                    .split_once('#')
                    .unwrap()
                    .1
                    .to_owned()
            })
            .collect()
    };

    // aws dynamodb query --table-name audit \
    //   --key-condition-expression "account = :a AND sk BETWEEN :from AND :to" \
    //   --expression-attribute-values '{":a":{"S":"main"},":from":{"S":"2026-11-30T22:00:05.000Z"},":to":{"S":"2026-11-30T22:00:10.000Z"}}'
    let by_time = d
        .sdk()
        .query()
        .table_name("audit")
        .key_condition_expression("account = :a AND sk BETWEEN :from AND :to")
        .expression_attribute_values(":a", s("main"))
        .expression_attribute_values(":from", s("2026-11-30T22:00:05.000Z"))
        .expression_attribute_values(":to", s("2026-11-30T22:00:10.000Z"))
        .send()
        .await
        .unwrap();
    // From 22:00:05.000 included to 22:00:10.000 excluded (sk = time#id sorts after the bare time).
    let want: BTreeSet<String> = (5..10)
        .map(|i| format!("main-{i}"))
        .chain(["q".to_owned()])
        .collect();
    assert_eq!(ids(by_time.items()), want);
    // In time order.
    let order: Vec<&str> = by_time
        .items()
        .iter()
        .map(|i| i["sk"].as_s().unwrap().as_str())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    // aws dynamodb query --table-name audit --index-name byAction \
    //   --key-condition-expression "actionId = :a AND sk BETWEEN :from AND :to" \
    //   --expression-attribute-values '{":a":{"S":"LOGIN_FAILED"},":from":{"S":"2026-11-30T22:00:00.000Z"},":to":{"S":"2026-11-30T22:00:10.000Z"}}'
    let by_action = d
        .sdk()
        .query()
        .table_name("audit")
        .index_name("byAction")
        .key_condition_expression("actionId = :a AND sk BETWEEN :from AND :to")
        .expression_attribute_values(":a", s("LOGIN_FAILED"))
        .expression_attribute_values(":from", s("2026-11-30T22:00:00.000Z"))
        .expression_attribute_values(":to", s("2026-11-30T22:00:10.000Z"))
        .send()
        .await
        .unwrap();
    // Every account's (the index spans accounts): even records of main in [0, 10), of other in [0, 6).
    let want: BTreeSet<String> = [0, 2, 4, 6, 8]
        .iter()
        .map(|i| format!("main-{i}"))
        .chain([0, 2, 4].iter().map(|i| format!("other-{i}")))
        .collect();
    assert_eq!(ids(by_action.items()), want);
    // Projection ALL: the whole item, the record included.
    assert!(by_action.items().iter().all(|i| i.contains_key("record")));
}
