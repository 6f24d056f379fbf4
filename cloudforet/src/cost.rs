//! A cost data source's records (`CostInfo`), decoded by hand, and their amounts as exact
//! decimals.
//!
//! Until `spaceone-api` 1.12 (2024-04) `cost` and `usage_quantity` were `float` (wire type 5,
//! four bytes); since then `double` (wire type 1, eight bytes). Plugins pinned to the old
//! package still send floats: a generated decoder for the current proto fails the whole batch
//! on them (`UnexpectedWireType`). This one takes either, and keeps which it was, because an
//! amount is read from the shortest text that gives back the number sent, in its own width:
//! `0.1f32` is "0.1", not the 0.100000001490116… its binary value widens to.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use prost_types::Struct;
use rust_decimal::Decimal;

/// An amount as the plugin sent it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Double(f64),
    /// An older plugin's `float`.
    Float(f32),
}

impl Default for Amount {
    fn default() -> Self {
        Amount::Double(0.0)
    }
}

impl Amount {
    /// The exact decimal the plugin meant: the shortest text that reads back as the number
    /// sent, never its binary expansion.
    ///
    /// # Errors
    /// NaN, an infinity, or a magnitude no decimal holds (over about 7.9 × 10²⁸).
    pub fn to_decimal(self) -> Result<Decimal, String> {
        let text = match self {
            Amount::Double(v) if v.is_finite() => v.to_string(),
            Amount::Float(v) if v.is_finite() => v.to_string(),
            other => return Err(format!("{other:?} is not an amount")),
        };
        text.parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(&text))
            .map(|d| d.normalize())
            .map_err(|e| format!("{text} is not an amount Gleaner can hold: {e}"))
    }

    fn as_f64(self) -> f64 {
        match self {
            Amount::Double(v) => v,
            Amount::Float(v) => f64::from(v),
        }
    }
}

/// `spaceone.api.cost_analysis.plugin.CostInfo`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostInfo {
    pub cost: Amount,
    pub usage_quantity: Amount,
    pub usage_unit: String,
    pub provider: String,
    pub region_code: String,
    pub product: String,
    pub usage_type: String,
    pub resource: String,
    pub tags: Option<Struct>,
    pub additional_info: Option<Struct>,
    pub data: Option<Struct>,
    pub billed_date: String,
}

fn merge_amount(
    amount: &mut Amount,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    *amount = match wire_type {
        WireType::ThirtyTwoBit => {
            let mut v = 0f32;
            encoding::float::merge(wire_type, &mut v, buf, ctx)?;
            Amount::Float(v)
        }
        _ => {
            let mut v = 0f64;
            encoding::double::merge(wire_type, &mut v, buf, ctx)?;
            Amount::Double(v)
        }
    };
    Ok(())
}

const STRINGS: [u32; 7] = [3, 4, 5, 6, 7, 8, 21];

impl CostInfo {
    fn string(&self, tag: u32) -> &String {
        match tag {
            3 => &self.usage_unit,
            4 => &self.provider,
            5 => &self.region_code,
            6 => &self.product,
            7 => &self.usage_type,
            8 => &self.resource,
            _ => &self.billed_date,
        }
    }

    fn string_mut(&mut self, tag: u32) -> &mut String {
        match tag {
            3 => &mut self.usage_unit,
            4 => &mut self.provider,
            5 => &mut self.region_code,
            6 => &mut self.product,
            7 => &mut self.usage_type,
            8 => &mut self.resource,
            _ => &mut self.billed_date,
        }
    }

    fn structs(&self) -> [(u32, &Option<Struct>); 3] {
        [
            (12, &self.tags),
            (13, &self.additional_info),
            (14, &self.data),
        ]
    }
}

impl Message for CostInfo {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // Encoded as the current proto has it (doubles): only tests encode.
        for (tag, amount) in [(1, self.cost), (2, self.usage_quantity)] {
            if amount.as_f64() != 0.0 {
                encoding::double::encode(tag, &amount.as_f64(), buf);
            }
        }
        for tag in STRINGS {
            let s = self.string(tag);
            if !s.is_empty() {
                encoding::string::encode(tag, s, buf);
            }
        }
        for (tag, s) in self.structs() {
            if let Some(s) = s {
                encoding::message::encode(tag, s, buf);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => merge_amount(&mut self.cost, wire_type, buf, ctx),
            2 => merge_amount(&mut self.usage_quantity, wire_type, buf, ctx),
            t if STRINGS.contains(&t) => {
                encoding::string::merge(wire_type, self.string_mut(t), buf, ctx)
            }
            12 => encoding::message::merge(
                wire_type,
                self.tags.get_or_insert_with(Struct::default),
                buf,
                ctx,
            ),
            13 => encoding::message::merge(
                wire_type,
                self.additional_info.get_or_insert_with(Struct::default),
                buf,
                ctx,
            ),
            14 => encoding::message::merge(
                wire_type,
                self.data.get_or_insert_with(Struct::default),
                buf,
                ctx,
            ),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let amounts: usize = [(1, self.cost), (2, self.usage_quantity)]
            .into_iter()
            .filter(|(_, a)| a.as_f64() != 0.0)
            .map(|(tag, a)| encoding::double::encoded_len(tag, &a.as_f64()))
            .sum();
        let strings: usize = STRINGS
            .iter()
            .map(|&tag| (tag, self.string(tag)))
            .filter(|(_, s)| !s.is_empty())
            .map(|(tag, s)| encoding::string::encoded_len(tag, s))
            .sum();
        let structs: usize = self
            .structs()
            .into_iter()
            .filter_map(|(tag, s)| s.as_ref().map(|s| encoding::message::encoded_len(tag, s)))
            .sum();
        amounts + strings + structs
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_and_doubles_both_decode() {
        // cost 1.25 as a double (field 1, wire type 1) and as a float (wire type 5), then the
        // billed date.
        let double = [
            &[0x09][..],
            &1.25f64.to_le_bytes(),
            &[0xaa, 0x01, 10],
            b"2026-11-30",
        ]
        .concat();
        let float = [&[0x0d][..], &1.25f32.to_le_bytes()].concat();
        assert_eq!(double[..9], [0x09, 0, 0, 0, 0, 0, 0, 0xf4, 0x3f]);
        assert_eq!(float, [0x0d, 0, 0, 0xa0, 0x3f]);
        let d = CostInfo::decode(&double[..]).expect("double");
        assert_eq!(d.cost, Amount::Double(1.25));
        assert_eq!(d.billed_date, "2026-11-30");
        let f = CostInfo::decode(&float[..]).expect("float");
        assert_eq!(f.cost, Amount::Float(1.25));
    }

    #[test]
    fn amounts_are_their_shortest_text() {
        let dec = |a: Amount| a.to_decimal().expect("amount").to_string();
        assert_eq!(dec(Amount::Double(0.1)), "0.1");
        assert_eq!(dec(Amount::Double(0.1 + 0.2)), "0.30000000000000004");
        // The float's own shortest text, not its value widened to a double.
        assert_eq!(dec(Amount::Float(0.1)), "0.1");
        assert_eq!(dec(Amount::Double(1e-10)), "0.0000000001");
        assert_eq!(
            dec(Amount::Double(123_456_789.012_345_67)),
            "123456789.01234567"
        );
        assert_eq!(dec(Amount::Double(-2.5)), "-2.5");
        assert_eq!(dec(Amount::default()), "0");
        assert!(Amount::Double(f64::NAN).to_decimal().is_err());
        assert!(Amount::Double(1e40).to_decimal().is_err());
    }

    #[test]
    fn a_record_survives_a_round_trip() {
        let c = CostInfo {
            cost: Amount::Double(3.5),
            usage_quantity: Amount::Double(24.0),
            usage_unit: "Hrs".into(),
            provider: "aws".into(),
            region_code: "us-east-1".into(),
            product: "AmazonEC2".into(),
            usage_type: "USE1-BoxUsage:t3.micro".into(),
            resource: "i-1".into(),
            tags: Some(crate::value::from_json(
                serde_json::json!({"env": "prod"})
                    .as_object()
                    .expect("object"),
            )),
            additional_info: None,
            data: None,
            billed_date: "2026-11-30".into(),
        };
        let bytes = c.encode_to_vec();
        assert_eq!(bytes.len(), c.encoded_len());
        assert_eq!(CostInfo::decode(&bytes[..]).expect("decode"), c);
    }
}
